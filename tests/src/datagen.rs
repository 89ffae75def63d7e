//! A deterministic byte stream for transfer tests: both ends generate it from a seed, so the
//! receiver can check every byte without the data ever being stored.

/// xorshift64* bytes, 8 at a time (little-endian), from a non-zero state.
#[derive(Clone, Debug)]
pub struct Stream {
    state: u64,
    buf: [u8; 8],
    used: usize,
}

impl Stream {
    pub fn new(seed: u64) -> Self {
        Self {
            // xorshift needs a non-zero state.
            state: seed ^ 0x9e37_79b9_7f4a_7c15 | 1,
            buf: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 8 {
                self.buf = self.next_word().to_le_bytes();
                self.used = 0;
            }
            *b = self.buf[self.used];
            self.used += 1;
        }
    }
}

/// Checks received bytes against the stream as they arrive.
#[derive(Clone, Debug)]
pub struct Checker {
    stream: Stream,
    scratch: Vec<u8>,
    /// Bytes checked so far.
    pub len: u64,
    /// Offset of the first byte that differed.
    pub first_mismatch: Option<u64>,
}

impl Checker {
    pub fn new(seed: u64) -> Self {
        Self {
            stream: Stream::new(seed),
            scratch: Vec::new(),
            len: 0,
            first_mismatch: None,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.scratch.resize(data.len(), 0);
        self.stream.fill(&mut self.scratch);
        if self.first_mismatch.is_none()
            && let Some(i) = data.iter().zip(&self.scratch).position(|(a, b)| a != b)
        {
            self.first_mismatch = Some(self.len + i as u64);
        }
        self.len += data.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_deterministic_and_chunking_does_not_matter() {
        let mut a = vec![0u8; 1000];
        Stream::new(7).fill(&mut a);
        let mut b = vec![0u8; 1000];
        let mut s = Stream::new(7);
        for chunk in b.chunks_mut(13) {
            s.fill(chunk);
        }
        assert_eq!(a, b);
        let mut c = vec![0u8; 1000];
        Stream::new(8).fill(&mut c);
        assert_ne!(a, c);
        let mut k = Checker::new(7);
        k.update(&a[..500]);
        k.update(&a[500..]);
        assert_eq!((k.len, k.first_mismatch), (1000, None));
        let mut bad = a.clone();
        bad[777] ^= 1;
        let mut k = Checker::new(7);
        k.update(&bad);
        assert_eq!(k.first_mismatch, Some(777));
    }
}

//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4): the lookup table of one service.
//!
//! Each backend gets a permutation of the table's M entries from two hashes of its stable
//! identity (its `ip:port`, never its id, which differs between agents): `offset = h1 % M`,
//! `skip = h2 % (M - 1) + 1`, entry j of the permutation is `(offset + j * skip) % M` (M is
//! prime, so every skip generates all entries). Backends take turns claiming the next free entry
//! of their permutation until the table is full. Every backend ends up with ⌊M/N⌋ or ⌈M/N⌉
//! entries, and adding or removing one backend moves few entries besides its own, so most flows
//! keep their backend when the set changes.
//!
//! The hashes are fixed (FNV-1a with two different offsets, then a 64-bit finalizer), so every
//! agent, on any platform and after any restart, builds the same table for the same backends.

/// Table size: the shared constant (a prime).
pub const M: usize = clusterip_common::MAGLEV_TABLE_SIZE;

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// A second, unrelated starting point for the second hash.
const SEED2: u64 = 0x9e37_79b9_7f4a_7c15;

/// FNV-1a over `bytes` starting from `seed`, then the MurmurHash3 64-bit finalizer (FNV alone
/// spreads similar strings such as `10.0.0.1:80` and `10.0.0.2:80` poorly in its low bits).
pub fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// (offset, skip) of a backend's permutation.
fn permutation(name: &str, m: usize) -> (usize, usize) {
    let m64 = m as u64;
    let offset = hash(FNV_OFFSET, name.as_bytes()) % m64;
    let skip = hash(SEED2, name.as_bytes()) % (m64 - 1) + 1;
    (offset as usize, skip as usize)
}

/// Populates a Maglev table of `M` entries for backends identified by `names`; entry i of the
/// result is an index into `names`. Empty when `names` is empty. The result depends only on the
/// set of names, not on their order. With more than M backends only M of them get an entry.
pub fn populate(names: &[&str]) -> Vec<usize> {
    let m = M;
    if names.is_empty() {
        return Vec::new();
    }
    // Turn order by name, so that the input order does not matter.
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|a, b| names[*a].cmp(names[*b]).then(a.cmp(b)));
    // Current position in each backend's permutation.
    let mut state: Vec<(usize, usize)> = order.iter().map(|i| permutation(names[*i], m)).collect();
    let mut table: Vec<Option<usize>> = vec![None; m];
    let mut filled = 0;
    'fill: loop {
        for (turn, idx) in order.iter().enumerate() {
            let (pos, skip) = &mut state[turn];
            // A permutation visits every entry, and some entry is free: this ends.
            while table[*pos].is_some() {
                *pos = (*pos + *skip) % m;
            }
            table[*pos] = Some(*idx);
            *pos = (*pos + *skip) % m;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    fn build(names: &[String]) -> Vec<String> {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        populate(&refs)
            .into_iter()
            .map(|i| names[i].clone())
            .collect()
    }

    #[test]
    fn every_backend_gets_its_fair_share() {
        for n in [1, 2, 3, 7, 10, 50, 100, 1021] {
            let ns = names(n);
            let table = build(&ns);
            assert_eq!(table.len(), M);
            for name in &ns {
                let owned = table.iter().filter(|t| *t == name).count();
                assert!(
                    owned == M / n || owned == M.div_ceil(n),
                    "n={n}: {name} owns {owned}"
                );
            }
        }
    }

    #[test]
    fn more_backends_than_entries_fills_the_table() {
        let ns = names(1100);
        let table = build(&ns);
        assert_eq!(table.len(), M);
        let distinct: std::collections::BTreeSet<_> = table.iter().collect();
        assert_eq!(distinct.len(), M);
    }

    #[test]
    fn empty_set_gives_an_empty_table() {
        assert!(populate(&[]).is_empty());
    }

    #[test]
    fn deterministic_and_order_independent() {
        let ns = names(10);
        let a = build(&ns);
        let mut reversed = ns.clone();
        reversed.reverse();
        assert_eq!(a, build(&reversed));
        assert_eq!(a, build(&ns));
        // Pinned values: the table must not change between versions or platforms, or
        // restarting (or upgrading) an agent would move flows.
        assert_eq!(hash(FNV_OFFSET, b"10.244.0.1:8080"), 0x4618_ec18_32bb_ac2f);
        assert_eq!(
            &a[..3],
            ["10.244.0.4:8080", "10.244.0.2:8080", "10.244.0.6:8080"]
        );
    }

    #[test]
    fn removing_a_backend_moves_only_its_entries() {
        for n in [5usize, 10, 20] {
            let ns = names(n);
            let before = build(&ns);
            for removed in 0..n {
                let mut rest = ns.clone();
                let gone = rest.remove(removed);
                let after = build(&rest);
                let others: Vec<usize> = (0..M).filter(|i| before[*i] != gone).collect();
                let moved = others.iter().filter(|i| before[**i] != after[**i]).count();
                let frac = moved as f64 / others.len() as f64;
                assert!(
                    frac < 0.05,
                    "n={n}, removing {gone}: {moved} of {} other entries moved",
                    others.len()
                );
                // Its own entries all go to someone else.
                assert!(after.iter().all(|t| *t != gone));
            }
        }
    }

    #[test]
    fn adding_a_backend_moves_about_one_in_n_plus_one() {
        for n in [4usize, 9, 19] {
            let mut ns = names(n + 1);
            let new = ns.pop().unwrap_or_default();
            let before = build(&ns);
            ns.push(new.clone());
            let after = build(&ns);
            let moved = (0..M).filter(|i| before[*i] != after[*i]).count();
            let to_new = after.iter().filter(|t| **t == new).count();
            let ideal = M as f64 / (n + 1) as f64;
            assert!(to_new as f64 >= ideal.floor(), "n={n}: new owns {to_new}");
            // Entries that moved to an old backend (churn) stay small.
            let churn = moved - to_new;
            assert!(
                (churn as f64) < 0.05 * M as f64,
                "n={n}: {moved} moved, {to_new} to the new one"
            );
        }
    }
}

//! `agd invert --shard K/N`: the teacher's identities split into N disjoint shards, so N
//! GPUs or cluster jobs dream one folder together (the reference recipe is hours per GPU).
//!
//! Shard K (1-based) dreams only its identities, numbers and seeds its batches on its own,
//! and keeps its log, lock and batch journal in `<folder>/shard-K-of-N/`: the images land
//! in the folder itself, named by identity, so shards never write the same file, and
//! `agd incremental` reads the folder as if one run had dreamed it.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// One of N disjoint parts of the identities: contiguous and of sizes that differ by at
/// most one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 1..=count.
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Shard `index` (1-based) of `count`, if `1 ≤ index ≤ count`.
    pub fn new(index: usize, count: usize) -> Option<Self> {
        (index >= 1 && index <= count).then_some(Self { index, count })
    }

    /// This shard's identities among `0..classes`.
    pub fn identities(self, classes: i64) -> Range<i64> {
        let c = classes.max(0) as usize;
        let bound = |k: usize| (k * c / self.count) as i64;
        bound(self.index - 1)..bound(self.index)
    }

    /// The subfolder of the dreams folder with this shard's log and journal.
    pub fn folder_name(self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// As the flag writes it: `K/N`.
impl serde::Serialize for Shard {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Shard {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = || format!("`{s}`: expected K/N with 1 ≤ K ≤ N, e.g. 1/4");
        let (k, n) = s.split_once('/').ok_or_else(expected)?;
        let (k, n) = (
            k.trim().parse().map_err(|_| expected())?,
            n.trim().parse().map_err(|_| expected())?,
        );
        Shard::new(k, n).ok_or_else(expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_and_cover_every_identity() {
        for classes in [1i64, 7, 12, 40, 751, 4101] {
            for count in 1..=classes.min(9) as usize {
                let mut seen = vec![0u32; classes as usize];
                for index in 1..=count {
                    let ids = Shard::new(index, count).unwrap().identities(classes);
                    let size = ids.end - ids.start;
                    assert!(
                        size >= classes / count as i64 && size <= classes / count as i64 + 1,
                        "{index}/{count} of {classes}: {ids:?}"
                    );
                    for pid in ids {
                        seen[pid as usize] += 1;
                    }
                }
                assert!(seen.iter().all(|&n| n == 1), "{count} shards of {classes}");
            }
        }
        assert_eq!(Shard::new(1, 1).unwrap().identities(40), 0..40);
    }

    #[test]
    fn parses_k_of_n_and_names_what_it_expected() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(Shard { index: 2, count: 4 }.to_string(), "2/4");
        for bad in ["0/4", "5/4", "4", "a/b", "1/0", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("expected K/N"), "{bad}: {e}");
        }
    }
}

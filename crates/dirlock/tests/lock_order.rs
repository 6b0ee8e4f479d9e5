//! Property tests: `lock_order` and `LockSet` canonicalise, de-duplicate and sort, whatever the
//! spelling, repetition and order of the directories they are given.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dirlock::{LockOptions, LockSet, lock_order};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// A tree of real directories, plus symlinks to some of them, shared by all cases of one test.
struct Fixture {
    _root: tempfile::TempDir,
    /// The canonical path of each directory.
    dirs: Vec<PathBuf>,
}

impl Fixture {
    fn new() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(root.path()).unwrap();
        let mut dirs = Vec::new();
        for name in ["a", "b", "a/inner", "c d", "z", "b/x/y"] {
            let dir = base.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            dirs.push(dir);
        }
        std::fs::create_dir(base.join("links")).unwrap();
        for (i, dir) in dirs.iter().enumerate() {
            std::os::unix::fs::symlink(dir, base.join("links").join(i.to_string())).unwrap();
        }
        Fixture { _root: root, dirs }
    }

    /// One of several spellings of directory `i`.
    fn spell(&self, i: usize, variant: u8) -> PathBuf {
        let dir = &self.dirs[i];
        let base = dir.ancestors().find(|p| p.join("links").is_dir()).unwrap();
        match variant % 4 {
            0 => dir.clone(),
            1 => dir.join("."),
            2 => dir.join("..").join(dir.file_name().unwrap()),
            _ => base.join("links").join(i.to_string()),
        }
    }
}

fn picks(max: usize) -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((0..max, any::<u8>()), 0..12)
}

#[test]
fn lock_order_is_the_sorted_set_of_canonical_directories() {
    let fixture = Fixture::new();
    let mut runner = TestRunner::new(Config::with_cases(256));
    runner
        .run(&(picks(fixture.dirs.len()), any::<u64>()), |(picks, shuffle_seed)| {
            let spelled: Vec<PathBuf> = picks.iter().map(|&(i, v)| fixture.spell(i, v)).collect();
            let order = lock_order(&spelled).unwrap();

            let expected: BTreeSet<&PathBuf> = picks.iter().map(|&(i, _)| &fixture.dirs[i]).collect();
            prop_assert_eq!(order.iter().collect::<BTreeSet<_>>(), expected);
            prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "not strictly sorted: {:?}", order);

            // Any permutation of the input gives the same order.
            let mut shuffled = spelled.clone();
            let mut seed = shuffle_seed | 1;
            for k in (1..shuffled.len()).rev() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                shuffled.swap(k, (seed % (k as u64 + 1)) as usize);
            }
            prop_assert_eq!(lock_order(&shuffled).unwrap(), order);
            Ok(())
        })
        .unwrap();
}

#[test]
fn lock_set_holds_exactly_the_lock_order_and_releases_it_all() {
    let fixture = Fixture::new();
    let mut runner = TestRunner::new(Config::with_cases(64));
    runner
        .run(&picks(fixture.dirs.len()), |picks| {
            let spelled: Vec<PathBuf> = picks.iter().map(|&(i, v)| fixture.spell(i, v)).collect();
            let set = LockSet::acquire(&spelled, &LockOptions::new()).unwrap();
            let order = lock_order(&spelled).unwrap();
            prop_assert_eq!(set.dirs().map(Path::to_path_buf).collect::<Vec<_>>(), order.clone());
            for dir in &fixture.dirs {
                prop_assert_eq!(dir.join(".lifeline.lock").exists(), order.contains(dir));
            }
            set.release().unwrap();
            for dir in &fixture.dirs {
                prop_assert!(!dir.join(".lifeline.lock").exists());
            }
            Ok(())
        })
        .unwrap();
}

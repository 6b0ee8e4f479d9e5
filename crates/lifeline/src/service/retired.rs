//! Earlier generations that may still be draining, recognised by pid *and* start time (a pid
//! reused by an unrelated process is never counted).

use serde::{Deserialize, Serialize};

/// A process that handed over and may still be draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Retired {
    pub(crate) pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat`, field 22).
    pub(crate) start_time: u64,
}

impl Retired {
    /// This process, as its successor will see it once it retires.
    pub(crate) fn me() -> Option<Retired> {
        let pid = std::process::id();
        start_time(pid).map(|start_time| Retired { pid, start_time })
    }

    /// Whether the process still runs (and is not a zombie).
    pub(crate) fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// The start time of `pid` from `/proc/<pid>/stat`; `None` if it is gone or a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Field 22 (start time) of a `/proc/<pid>/stat` line, unless the state (field 3) says zombie.
/// The command name (field 2) may hold spaces and parentheses: fields are counted from the last
/// `)`.
fn parse_stat(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // After the state (field 3), the start time is the 19th field.
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = Retired::me().unwrap();
        assert!(me.is_alive());
        assert!(!Retired { start_time: me.start_time + 1, ..me }.is_alive());
        let line = "12 (a ) b) S 1 12 12 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0";
        assert_eq!(parse_stat(line), Some(4242));
        assert_eq!(parse_stat(&line.replace(" S ", " Z ")), None);
    }

    proptest! {
        #[test]
        fn arbitrary_stat_lines_never_panic(line in ".{0,200}") {
            let _ = parse_stat(&line);
        }
    }
}

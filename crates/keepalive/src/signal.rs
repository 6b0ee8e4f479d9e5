//! A Unix signal number with its conventional name, parsed from `SIGTERM`, `TERM` or `15`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A Unix signal, e.g. the stop signal sent to a process group.
///
/// A plain number underneath, so it crosses process and serialisation boundaries unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Signal(i32);

/// Named signals, for parsing and display.
const NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

impl Signal {
    /// `SIGHUP`: commonly "reload your configuration".
    pub const HUP: Signal = Signal(libc::SIGHUP);
    /// `SIGINT`: interrupt (Ctrl-C).
    pub const INT: Signal = Signal(libc::SIGINT);
    /// `SIGQUIT`.
    pub const QUIT: Signal = Signal(libc::SIGQUIT);
    /// `SIGABRT`: what a watchdog timeout sends by default (systemd's choice: it leaves a core).
    pub const ABRT: Signal = Signal(libc::SIGABRT);
    /// `SIGKILL`: cannot be caught; sent after the grace period.
    pub const KILL: Signal = Signal(libc::SIGKILL);
    /// `SIGUSR1`.
    pub const USR1: Signal = Signal(libc::SIGUSR1);
    /// `SIGUSR2`.
    pub const USR2: Signal = Signal(libc::SIGUSR2);
    /// `SIGTERM`: the default stop signal.
    pub const TERM: Signal = Signal(libc::SIGTERM);
    /// `SIGWINCH`: the terminal was resized (a container init passes it on).
    pub const WINCH: Signal = Signal(libc::SIGWINCH);

    /// The signal with this number. Any number is accepted here (it came from the kernel);
    /// [`FromStr`] validates user input.
    pub const fn from_raw(number: i32) -> Signal {
        Signal(number)
    }

    /// The signal number.
    pub const fn as_raw(self) -> i32 {
        self.0
    }

    /// The conventional name without the `SIG` prefix (`TERM`), if it has one.
    pub fn name(self) -> Option<&'static str> {
        NAMES.iter().find(|(_, n)| *n == self.0).map(|(name, _)| *name)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "SIG{name}"),
            None => write!(f, "signal {}", self.0),
        }
    }
}

impl FromStr for Signal {
    type Err = Error;

    /// Parses `SIGTERM`, `TERM`, `sigterm` or `15`. Real-time signals are accepted by number.
    fn from_str(s: &str) -> Result<Signal, Error> {
        let invalid = || Error::InvalidSignal { name: s.to_owned() };
        let trimmed = s.trim();
        if let Ok(number) = trimmed.parse::<i32>() {
            return if (1..=libc::SIGRTMAX()).contains(&number) {
                Ok(Signal(number))
            } else {
                Err(invalid())
            };
        }
        let upper = trimmed.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        NAMES.iter().find(|(name, _)| *name == bare).map(|(_, n)| Signal(*n)).ok_or_else(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_and_without_prefix_and_numbers() {
        assert_eq!("SIGTERM".parse::<Signal>().ok(), Some(Signal::TERM));
        assert_eq!("term".parse::<Signal>().ok(), Some(Signal::TERM));
        assert_eq!("9".parse::<Signal>().ok(), Some(Signal::KILL));
        assert_eq!("SIGUSR2".parse::<Signal>().ok(), Some(Signal::USR2));
    }

    #[test]
    fn refuses_unknown_names_and_out_of_range_numbers() {
        for bad in ["SIGNOPE", "", "0", "-1", "999", "SIG"] {
            assert!(
                matches!(bad.parse::<Signal>(), Err(Error::InvalidSignal { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn displays_the_conventional_name() {
        assert_eq!(Signal::KILL.to_string(), "SIGKILL");
        assert_eq!(Signal::from_raw(40).to_string(), "signal 40");
    }
}

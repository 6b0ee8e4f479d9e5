//! The exit statuses of every subcommand, in one table: `lifeline --help`, the man page
//! (`EXIT STATUS`) and the README print it, and the CLI tests hold each subcommand to it.

/// Nothing is serving at the control socket (`restart`, `status`): the socket file is missing,
/// or nobody accepts on it (a dead socket, or a file that is not one). `EX_UNAVAILABLE` of sysexits.h; distinct from a
/// usage error (2), so that a script can tell "the service is down" from "I called it wrong".
pub(crate) const NO_SERVICE: u8 = 69;

/// Every exit status, with what it means: the single source of the tables in `--help` and the
/// man page (the README's table is checked against it by `tests/cli_help.rs`).
pub(crate) const TABLE: &[(&str, &str)] = &[
    ("0", "success"),
    (
        "1",
        "the operation failed: a certificate pair refused or expiring within --checkend, a restart that \
         failed, a supervisor that gave up, a process still running after stop --timeout, or any other \
         error (one line on stderr)",
    ),
    ("2", "usage error: an unknown flag, a bad or missing value, a duration over 100y (nothing was started)"),
    ("3", "status: a supervisor (supervise --control) answered, but its service is not up and ready"),
    (
        "69",
        "restart, status, stop --socket: no service at the control socket (the file is missing, or nobody accepts on it)",
    ),
    ("75", "lock: a DIR is locked elsewhere; supervise --state: another supervisor holds the state file"),
    ("other", "lock: CMD's own exit status (128+N when signal N killed it)"),
];

/// The table as `--help` shows it after the subcommands (meanings wrapped at 100 columns).
pub(crate) fn help() -> String {
    use std::fmt::Write as _;
    const INDENT: usize = 9;
    let mut text = String::from("Exit status:\n");
    for (code, meaning) in TABLE {
        let _ = write!(text, "  {code:<5}  ");
        let mut column = INDENT;
        for (i, word) in meaning.split(' ').enumerate() {
            if i > 0 && column + 1 + word.len() > 100 {
                let _ = write!(text, "\n{:INDENT$}", "");
                column = INDENT;
            } else if i > 0 {
                text.push(' ');
                column += 1;
            }
            text.push_str(word);
            column += word.len();
        }
        text.push('\n');
    }
    text.push_str("\nRun `lifeline help <COMMAND>` for a command's flags and examples.");
    text
}

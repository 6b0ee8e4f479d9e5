//! `handover`: work in progress; see the workspace README.

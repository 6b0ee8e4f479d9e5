//! `restart-socket`: work in progress; see the workspace README.

//! Fault injection for tests (feature `fault-injection`): `LIFELINE_FAIL_AT=<step>` makes a
//! successor fail at that start-up step (`<step>:abort` aborts the process there instead).
//! A fresh process ignores it, so a test can start a service and watch its restarts fail.

use super::Error;

#[cfg(feature = "fault-injection")]
pub(crate) fn check(step: &'static str, successor: bool) -> Result<(), Error> {
    if !successor {
        return Ok(());
    }
    let Ok(wanted) = std::env::var("LIFELINE_FAIL_AT") else { return Ok(()) };
    if wanted == step {
        tracing::error!(step, "injected failure");
        return Err(Error::Injected { step });
    }
    if wanted.strip_suffix(":abort") == Some(step) {
        tracing::error!(step, "injected crash");
        std::process::abort();
    }
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
#[inline]
pub(crate) fn check(_step: &'static str, _successor: bool) -> Result<(), Error> {
    Ok(())
}

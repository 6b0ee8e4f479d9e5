//! Several certificates behind one listener, chosen by the client's server name (SNI).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::Error;
use crate::watcher::CertResolver;

/// Chooses among several watched certificates by SNI: an exact name first, then a wildcard
/// (`*.example.com` matches exactly one label: `a.example.com`, not `example.com` nor
/// `a.b.example.com`), then the default. Without a match and without a default the handshake
/// fails (rustls sends an alert).
///
/// Each entry is a [`CertResolver`] from its own [`CertWatcher`](crate::CertWatcher), so each
/// certificate reloads independently. Lookups take no lock; names are compared
/// case-insensitively.
#[derive(Clone, Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertResolver>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertResolver>>,
    default: Option<Arc<CertResolver>>,
}

impl SniResolver {
    /// An empty resolver (every handshake fails until names or a default are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `resolver`'s certificate for `pattern`: a DNS name (`example.com`) or a wildcard
    /// (`*.example.com`). A later entry for the same pattern replaces the earlier one.
    pub fn with_name(mut self, pattern: &str, resolver: Arc<CertResolver>) -> Result<Self, Error> {
        let name =
            normalize(pattern).ok_or_else(|| Error::InvalidServerName { pattern: pattern.to_owned() })?;
        if let Some(suffix) = name.strip_prefix("*.") {
            self.wildcard.insert(suffix.to_owned(), resolver);
        } else {
            self.exact.insert(name, resolver);
        }
        Ok(self)
    }

    /// Serves `resolver`'s certificate when no name matches, or the client sent none.
    pub fn with_default(mut self, resolver: Arc<CertResolver>) -> Self {
        self.default = Some(resolver);
        self
    }

    /// The resolver a handshake with this server name would use.
    pub fn select(&self, server_name: Option<&str>) -> Option<&Arc<CertResolver>> {
        crate::sni::by_name(&self.exact, &self.wildcard, self.default.as_ref(), server_name)
    }
}

/// The lookup of both SNI stores ([`SniResolver`], `CertDir`): the name lowercased (ASCII) and
/// without a trailing dot; an exact entry, else the wildcard of its parent (`*.example.com` is
/// keyed `example.com` and covers one label), else the default. No name (no SNI): the default.
pub(crate) fn by_name<'a, K, V, S>(
    exact: &'a HashMap<K, V, S>,
    wildcard: &'a HashMap<K, V, S>,
    default: Option<&'a V>,
    server_name: Option<&str>,
) -> Option<&'a V>
where
    K: std::borrow::Borrow<str> + std::hash::Hash + Eq,
    S: std::hash::BuildHasher,
{
    let Some(name) = server_name else { return default };
    let lowered;
    let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        lowered = name.to_ascii_lowercase();
        lowered.as_str()
    } else {
        name
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    exact.get(name).or_else(|| name.split_once('.').and_then(|(_, parent)| wildcard.get(parent))).or(default)
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<String> = self.exact.keys().cloned().collect();
        names.extend(self.wildcard.keys().map(|s| format!("*.{s}")));
        names.sort();
        f.debug_struct("SniResolver")
            .field("names", &names)
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.select(client_hello.server_name()).map(|r| r.current())
    }
}

/// Lower-cased, without a trailing dot; `None` unless it is a plausible DNS name, optionally
/// with `*` as its whole first label.
pub(crate) fn normalize(pattern: &str) -> Option<String> {
    let name = pattern.strip_suffix('.').unwrap_or(pattern).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let mut labels = name.split('.');
    let first = labels.next()?;
    let rest: Vec<&str> = labels.collect();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if first == "*" {
        // A bare `*` or `*.` would match every single-label name: refuse.
        if rest.is_empty() || !rest.iter().all(|l| label_ok(l)) {
            return None;
        }
    } else if !label_ok(first) || !rest.iter().all(|l| label_ok(l)) {
        return None;
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn patterns_are_normalized_or_refused() {
        assert_eq!(normalize("Example.COM.").as_deref(), Some("example.com"));
        assert_eq!(normalize("*.example.com").as_deref(), Some("*.example.com"));
        assert_eq!(normalize("localhost").as_deref(), Some("localhost"));
        for bad in ["", ".", "*", "*.", "a..b", "a*.example.com", "*.*.example.com", "ex ample.com", "-a.com"]
        {
            assert_eq!(normalize(bad), None, "{bad:?} should be refused");
        }
    }
}

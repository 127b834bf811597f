//! The certificate authorities HTTPS clients trust: destinations and token
//! endpoints are checked against Mozilla's root program, compiled in
//! (`webpki-root-certs`), plus the roots of `CA_BUNDLE` when it is set.
//! Reading the system's store instead opens every file under
//! `/etc/ssl/certs` at each cold start, and Lambda's store holds the same
//! public roots.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `CA_BUNDLE`: the roots of a PEM file, added to the public ones for
/// destinations and token endpoints behind a private CA. Read once, at
/// start-up.
#[derive(Clone)]
pub struct CaBundle {
    path: PathBuf,
    roots: Arc<Vec<reqwest::Certificate>>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl CaBundle {
    /// Reads the PEM certificates of `path`; the error says why the file
    /// cannot serve (missing, unreadable, no certificate in it).
    pub fn read(path: &Path) -> Result<CaBundle, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read {} ({})", path.display(), e.kind()))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| format!("{} is not a PEM certificate bundle", path.display()))?;
        if roots.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
        Ok(CaBundle {
            path: path.to_owned(),
            roots: Arc::new(roots),
        })
    }

    /// How many roots it adds.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

/// The trusted roots, for `reqwest::ClientBuilder::tls_certs_only`: the
/// public ones and those of `extra`.
pub(crate) fn trusted_roots(extra: Option<&CaBundle>) -> Vec<reqwest::Certificate> {
    let public = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok());
    let private = extra.into_iter().flat_map(|b| b.roots.iter().cloned());
    public.chain(private).collect()
}

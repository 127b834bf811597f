//! The certificate authorities HTTPS clients trust: destinations and token
//! endpoints are checked against Mozilla's root program, compiled in
//! (`webpki-root-certs`). Reading the system's store instead opens every
//! file under `/etc/ssl/certs` at each cold start, and Lambda's store holds
//! the same public roots. A private CA is to be added with `CA_BUNDLE`
//! (docs/security.md).

/// The trusted roots, for `reqwest::ClientBuilder::tls_certs_only`.
pub(crate) fn trusted_roots() -> Vec<reqwest::Certificate> {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok())
        .collect()
}

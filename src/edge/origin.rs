//! Whether a request comes from a page of this server: what keeps the development token (and,
//! in development mode, the Socket.IO handshake) to the server's own origin.

use axum::http::{HeaderMap, header};

/// Whether a request comes from a page of this server (or from no page at all, like
/// `curl`): no `Origin`, or one naming the request's own `Host`; and no `Sec-Fetch-Site`
/// other than `same-origin` or `none` (browsers send it with every fetch).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let origin_ok = match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => true,
        Some(Ok(origin)) => origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|authority| !host.is_empty() && authority.eq_ignore_ascii_case(host)),
        Some(Err(_)) => false,
    };
    let site_ok = match headers.get("sec-fetch-site").map(|s| s.to_str()) {
        None => true,
        Some(Ok(site)) => site == "same-origin" || site == "none",
        Some(Err(_)) => false,
    };
    origin_ok && site_ok
}

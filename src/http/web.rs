//! The web client: the files of web/ compiled into the binary (build.rs), or, when
//! `http.web_root` names a folder, that folder on disk (for working on the client). `/check`
//! is the connectivity check page. Knows nothing about sessions.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/web_files.rs"));

/// The embedded file for a request path: `/` and folders mean their index.html, `/check` the
/// check page. None for anything not in web/ (including `..` tricks: names are looked up, never
/// joined onto a filesystem path).
pub fn lookup(path: &str) -> Option<(&'static str, &'static [u8])> {
    let rel = path.trim_start_matches('/');
    let rel = match rel {
        "" => "index.html".to_owned(),
        "check" | "check/" => "check.html".to_owned(),
        r if r.ends_with('/') => format!("{r}index.html"),
        r => r.to_owned(),
    };
    WEB_FILES
        .iter()
        .find(|(name, _)| *name == rel)
        .map(|(name, bytes)| (*name, *bytes))
}

/// Serves an embedded file (GET and HEAD).
pub async fn embedded(uri: Uri) -> Response {
    let Some((name, bytes)) = lookup(uri.path()) else {
        return (StatusCode::NOT_FOUND, "Not found\n").into_response();
    };
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    // The files change only with the binary; "no-cache" makes browsers revalidate, so an
    // upgraded server never runs with yesterday's client modules.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_and_module_is_compiled_in() {
        for path in [
            "/",
            "/index.html",
            "/course.html",
            "/core.js",
            "/views/leader.js",
            "/sw.js",
            "/favicon.svg",
            "/check",
            "/check.html",
            "/check.js",
            "/client.js",
            "/page.js",
            "/i18n/nb.js",
            "/app.css",
        ] {
            assert!(lookup(path).is_some(), "{path} is not embedded");
        }
        let on_disk = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/web/page.js")).unwrap();
        assert_eq!(lookup("/page.js").unwrap().1, on_disk.as_slice());
    }

    #[test]
    fn unknown_and_escaping_paths_are_not_found() {
        for path in [
            "/nope.html",
            "/../Cargo.toml",
            "/i18n/../../src/lib.rs",
            "/web/index.html",
        ] {
            assert!(lookup(path).is_none(), "{path}");
        }
    }
}

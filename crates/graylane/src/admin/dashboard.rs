//! The web dashboard: a plain HTML/CSS/JS page served by the admin listener at `/`, its files
//! under `/dashboard/...`. The files are compiled into the binary (no network, no CDN, nothing
//! to install next to it); the page itself only talks to the admin API under `/api/v1`, with
//! the token a person signs in with, so it can do exactly what that token may do with the CLI.
//!
//! The files are open (like `/healthz`): they hold no data, only the code that asks for it.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::AdminState;

/// One embedded file: its path under `assets/dashboard/`, its media type and its bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/assets/dashboard/",
                $path
            )),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the page. A test checks that this list and the folder agree.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("js/app.js", JS),
    asset!("js/api.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/chart.js", JS),
    asset!("js/confirm.js", JS),
    asset!("js/releases.js", JS),
    asset!("js/fleet.js", JS),
    asset!("js/release.js", JS),
    asset!("js/experiments.js", JS),
    asset!("js/config.js", JS),
    asset!("js/audit.js", JS),
];

/// A strong validator per asset, so a browser revalidates (`Cache-Control: no-cache`) and gets
/// a `304` until the binary is upgraded: never a stale page after an upgrade.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            // FNV-1a: small, stable, good enough to tell versions of a file apart.
            let hash = a.body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
            HeaderValue::try_from(format!("\"{hash:016x}-{}\"", a.body.len()))
                .expect("an ETag of hex digits is a valid header value")
        })
        .collect()
});

/// Only this origin's files and API; no inline script or style, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `/` (the page) and `/dashboard/...` (its files).
pub(crate) fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve("index.html", &headers) }),
        )
        .route("/dashboard", get(|| async { redirect_home() }))
        .route("/dashboard/", get(|| async { redirect_home() }))
        .route(
            "/dashboard/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move {
                serve(&path, &headers)
            }),
        )
}

fn redirect_home() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/")]).into_response()
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        let mut resp = (
            StatusCode::NOT_FOUND,
            format!("not found: the dashboard has no file `{path}`; open / for the dashboard\n"),
        )
            .into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return resp;
    };
    let asset = &ASSETS[i];
    let etag = &ETAGS[i];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == etag.to_str().unwrap_or(""))
        });
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file added to the folder but not to [`ASSETS`] would be missing from the binary (and
    /// a listed one missing from the folder would not compile).
    #[test]
    fn every_file_in_the_folder_is_embedded() {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    let rel = path.strip_prefix(root).unwrap().to_string_lossy();
                    out.push(rel.replace('\\', "/"));
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/dashboard");
        let mut on_disk = Vec::new();
        walk(&root, &root, &mut on_disk);
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.path.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn the_page_loads_only_embedded_files() {
        let index = String::from_utf8_lossy(ASSETS[0].body);
        for reference in index.split("\"/dashboard/").skip(1) {
            let path = reference.split('"').next().unwrap();
            assert!(ASSETS.iter().any(|a| a.path == path), "{path}");
        }
        for asset in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let text = String::from_utf8_lossy(asset.body);
            // Every `from './x.js'` of an import, on one line or several.
            for reference in text.split(" from './").skip(1) {
                let module = reference.split('\'').next().unwrap();
                assert!(
                    ASSETS.iter().any(|a| a.path == format!("js/{module}")),
                    "{} imports {module}",
                    asset.path
                );
            }
        }
    }

    #[test]
    fn an_unchanged_file_is_not_sent_again() {
        let first = serve("style.css", &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            serve("style.css", &again).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            serve("nope.js", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}

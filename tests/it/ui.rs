//! The dashboard's files: embedded, served with a strict CSP, open without the key (they hold
//! no data) while the API behind them is not. The pages themselves are tested in a real
//! browser by scripts/browser_tests.py (CI).

use crate::app::{Options, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_open_and_the_api_behind_it_is_not() {
    let app = spawn_app_with(Options {
        api_key: Some("k3y".into()),
        ..Default::default()
    })
    .await;
    let get = |path: &str| app.client.get(app.url(path)).send();
    for path in ["/", "/ui", "/ui/jobs/123", "/ui/detect"] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let body = r.text().await.unwrap();
        assert!(body.contains("/ui/app.js"), "{path}");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "no CDN: {path}"
        );
    }
    let r = get("/ui/app.js").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let js = r.text().await.unwrap();
    for remote in ["from \"http", "from 'http", "import(\"http", "fetch(\"http"] {
        assert!(!js.contains(remote), "no remote code: {remote}");
    }
    assert_eq!(get("/ui/style.css").await.unwrap().status(), 200);
    // Unknown files are 404 JSON, and nothing outside the embedded set is reachable.
    for path in [
        "/ui/evil.js",
        "/ui/..%2F..%2FCargo.toml",
        "/ui/../Cargo.toml",
    ] {
        let r = get(path).await.unwrap();
        assert!(
            [401, 404].contains(&r.status().as_u16()),
            "{path}: {}",
            r.status()
        );
    }
    // The API behind the pages still needs the key.
    assert_eq!(get("/v1/jobs").await.unwrap().status(), 401);
    let r = app
        .client
        .get(app.url("/v1/jobs"))
        .bearer_auth("k3y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Writing methods on the pages are not open.
    let r = app.client.post(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    app.shutdown().await;
}

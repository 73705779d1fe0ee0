//! What the README shows is what the service produces.

use ingress_egress::connectors::twilio::console::console_urls;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

#[test]
fn the_console_url_table_is_what_the_service_prints() {
    let readme = readme();
    let marker = "<!-- console-urls: ";
    let start = readme
        .find(marker)
        .expect("the README has the console URL table");
    let block = &readme[start + marker.len()..];
    let base = block[..block.find(" -->").unwrap()].trim();
    let block = &block[..block
        .find("<!-- /console-urls -->")
        .expect("the table ends")];
    let rows: Vec<(String, String)> = block
        .lines()
        .filter(|line| line.starts_with("| ") && line.contains('`'))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 2, "{line}");
            (cells[0].to_owned(), cells[1].trim_matches('`').to_owned())
        })
        .collect();
    let expected: Vec<(String, String)> = console_urls(&url::Url::parse(base).unwrap())
        .into_iter()
        .map(|u| (u.place.to_owned(), u.url))
        .collect();
    assert_eq!(
        rows, expected,
        "README.md's table for {base} is out of date"
    );
}

#[test]
fn the_readme_runs_no_second_release_build_and_names_no_outside_files() {
    let readme = readme();
    assert!(
        !readme.contains("--release"),
        "the RabbitMQ section reuses the debug build"
    );
    // A clone has nothing beside it: no path may climb out of the repository.
    assert!(
        !readme.contains("../"),
        "the README names a path outside the repository"
    );
}

#[tokio::test]
async fn the_snapshot_lists_the_console_urls_for_the_configured_base() {
    let app = crate::helpers::spawn_app(None, &[]).await;
    let snapshot: serde_json::Value = app.get("/_debug/twilio").await.json().await.unwrap();
    let base = url::Url::parse(&crate::helpers::fixture_tokens().public_base_url).unwrap();
    let expected = serde_json::to_value(console_urls(&base)).unwrap();
    assert_eq!(snapshot["twilio"]["consoleUrls"], expected, "{snapshot}");
    assert!(expected[0]["url"]
        .as_str()
        .unwrap()
        .ends_with("/webhooks/twilio/sms#rc=3&rp=all&ct=1000&rt=2750&tt=15000"));
}

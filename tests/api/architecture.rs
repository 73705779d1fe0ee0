//! `architecture.yaml` and `.env.example` declare exactly the variables the code reads, every
//! secret has its Secret Manager name (and `cloudbuild.yaml` maps it), and every documented HTTP
//! path is declared.
//!
//! "The variables the code reads" are the fields of `RawSettings` in
//! `src/configuration/mod.rs` and of each connector's `Raw…` struct in
//! `src/connectors/<name>/config.rs` behind its `envy::prefixed("…")` (envy upper-cases them), every `env::var("…")` / `env::var_os("…")` under `src/`, and
//! `RUST_LOG` when `EnvFilter::try_from_default_env` is used.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde_yaml_ng::Value;

use crate::helpers::spawn_app;

/// Set by the platform (Cloud Run, the container runtime); architecture.yaml may list them
/// under `platformEnv`, `.env.example` need not.
const PLATFORM_VARS: &[&str] = &["K_SERVICE", "K_REVISION", "HOSTNAME"];
/// Read by tests or scripts only, never by the service.
const TEST_ONLY_VARS: &[&str] = &["REQUIRE_AMQP", "REQUIRE_REDIS", "UPDATE_OPENAPI"];
/// Values that must come from Secret Manager, never from plain env.
const SECRETS: &[&str] = &[
    "AMQP_URL",
    "REDIS_URL",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_SECONDARY_AUTH_TOKEN",
    "TWILIO_API_SECRET",
    "DEBUG_TOKEN",
    "OPERATOR_TOKEN",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

pub fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The field names of `pub struct <name> { … }`, upper-cased, each with `prefix` before it.
fn raw_settings_vars(source: &str, name: &str, prefix: &str) -> BTreeSet<String> {
    let start = source
        .find(&format!("pub struct {name} {{"))
        .unwrap_or_else(|| panic!("the settings source defines `pub struct {name} {{`"));
    let body = &source[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find("\n}").expect("struct ends")];
    let vars: BTreeSet<String> = body
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("//") && !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let name = line.split(':').next()?.trim();
            let name = name.strip_prefix("pub ").unwrap_or(name).trim();
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                .then(|| format!("{prefix}{}", name.to_ascii_uppercase()))
        })
        .collect();
    assert!(vars.len() > 10, "{name} parsed to too few fields: {vars:?}");
    vars
}

/// Each connector's variables: the `Raw…` struct its `config.rs` deserialises with
/// `envy::prefixed("PREFIX_")`.
fn connector_vars() -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("src/connectors")).expect("src/connectors") {
        let config = entry.expect("dir entry").path().join("config.rs");
        let Ok(source) = std::fs::read_to_string(&config) else {
            continue;
        };
        let prefix_at = source.find("envy::prefixed(\"").unwrap_or_else(|| {
            panic!(
                "{} reads its variables with envy::prefixed",
                config.display()
            )
        });
        let prefix = &source[prefix_at + "envy::prefixed(\"".len()..];
        let prefix = &prefix[..prefix.find('"').expect("prefix literal ends")];
        let struct_at = source
            .find("pub struct Raw")
            .unwrap_or_else(|| panic!("{} defines `pub struct Raw…`", config.display()));
        let name = source[struct_at + "pub struct ".len()..]
            .split_whitespace()
            .next()
            .expect("struct name");
        vars.extend(raw_settings_vars(&source, name, prefix));
    }
    assert!(!vars.is_empty(), "no connector settings found");
    vars
}

/// String literals passed to `env::var(` / `env::var_os(`.
fn env_var_literals(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for call in ["env::var(\"", "env::var_os(\""] {
        let mut rest = source;
        while let Some(at) = rest.find(call) {
            rest = &rest[at + call.len()..];
            if let Some(end) = rest.find('"') {
                found.insert(rest[..end].to_owned());
            }
        }
    }
    found
}

/// Every variable the service reads, platform ones included, test-only ones excluded.
fn vars_read_by_code() -> BTreeSet<String> {
    let mut vars = raw_settings_vars(&read("src/configuration/mod.rs"), "RawSettings", "");
    vars.extend(connector_vars());
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut uses_rust_log = false;
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        vars.extend(env_var_literals(&source));
        uses_rust_log |= source.contains("EnvFilter::try_from_default_env")
            || source.contains("EnvFilter::from_default_env");
    }
    if uses_rust_log {
        vars.insert("RUST_LOG".to_owned());
    }
    vars.retain(|v| !TEST_ONLY_VARS.contains(&v.as_str()));
    vars
}

fn architecture() -> Value {
    serde_yaml_ng::from_str(&read("architecture.yaml")).expect("architecture.yaml is valid YAML")
}

fn service(doc: &Value) -> &Value {
    let services = doc["services"].as_sequence().expect("services: [...]");
    services
        .iter()
        .find(|s| s["name"].as_str() == Some("ingress-egress"))
        .expect("a service named ingress-egress")
}

fn names(list: &Value, what: &str) -> BTreeSet<String> {
    list.as_sequence()
        .unwrap_or_else(|| panic!("{what} is a list"))
        .iter()
        .map(|entry| {
            entry["name"]
                .as_str()
                .unwrap_or_else(|| panic!("every {what} entry has a name: {entry:?}"))
                .to_owned()
        })
        .collect()
}

/// `NAME=` at the start of a line, commented out (`# NAME=`) or not.
fn env_example_vars() -> BTreeSet<String> {
    read(".env.example")
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix('#').map(str::trim_start).unwrap_or(line);
            let (name, _) = line.split_once('=')?;
            (!name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && name.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
            .then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn the_code_reads_what_the_settings_struct_says() {
    let vars = vars_read_by_code();
    for expected in [
        "PORT",
        "AMQP_URL",
        "TWILIO_AUTH_TOKEN",
        "K_SERVICE",
        "RUST_LOG",
    ] {
        assert!(vars.contains(expected), "{expected} not found in {vars:?}");
    }
}

#[test]
fn architecture_yaml_declares_exactly_the_variables_the_code_reads() {
    let doc = architecture();
    let service = service(&doc);
    let env = names(&service["env"], "env");
    let secrets = names(&service["secrets"], "secrets");
    let platform = names(&service["platformEnv"], "platformEnv");
    let code = vars_read_by_code();

    let overlap: Vec<_> = env.intersection(&secrets).collect();
    assert!(
        overlap.is_empty(),
        "declared both as env and secret: {overlap:?}"
    );

    let declared: BTreeSet<String> = env.union(&secrets).cloned().collect();
    let missing: Vec<_> = code
        .iter()
        .filter(|v| !PLATFORM_VARS.contains(&v.as_str()) && !declared.contains(*v))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the code but missing from architecture.yaml: {missing:?}"
    );

    let unread: Vec<_> = declared
        .union(&platform)
        .filter(|v| !code.contains(*v))
        .collect();
    assert!(
        unread.is_empty(),
        "declared in architecture.yaml but never read: {unread:?}"
    );
    for var in &platform {
        assert!(
            PLATFORM_VARS.contains(&var.as_str()),
            "{var} is not set by the platform"
        );
    }

    for secret in SECRETS {
        assert!(
            secrets.contains(*secret),
            "{secret} must be declared under secrets"
        );
    }
    for entry in service["env"].as_sequence().unwrap() {
        let name = entry["name"].as_str().unwrap();
        assert!(
            entry.get("default").is_some(),
            "env {name} states its default (null when there is none)"
        );
        assert!(
            entry["description"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty()),
            "env {name} has a description"
        );
    }
    for entry in service["secrets"].as_sequence().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let secret_name = entry["secretManager"]["name"].as_str();
        assert!(
            secret_name.is_some_and(|n| !n.is_empty()),
            "secret {name} names its Secret Manager secret"
        );
        assert!(
            entry["required"].as_bool().is_some(),
            "secret {name} says whether it is required"
        );
        assert!(
            entry["description"].as_str().is_some(),
            "secret {name} has a description"
        );
    }
}

#[test]
fn env_example_lists_exactly_the_variables_the_code_reads() {
    let example = env_example_vars();
    let code = vars_read_by_code();
    let missing: Vec<_> = code
        .iter()
        .filter(|v| !PLATFORM_VARS.contains(&v.as_str()) && !example.contains(*v))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the code but missing from .env.example: {missing:?}"
    );
    let unread: Vec<_> = example.iter().filter(|v| !code.contains(*v)).collect();
    assert!(
        unread.is_empty(),
        "listed in .env.example but never read: {unread:?}"
    );
}

#[test]
fn cloudbuild_maps_every_secret_from_secret_manager() {
    let doc = architecture();
    let service = service(&doc);
    let cloudbuild = read("cloudbuild.yaml");
    let _: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&cloudbuild).expect("cloudbuild.yaml is valid YAML");
    for entry in service["secrets"].as_sequence().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let secret_name = entry["secretManager"]["name"].as_str().unwrap();
        let required = entry["required"].as_bool().unwrap();
        let mapping = format!("{name}={secret_name}:latest");
        if required {
            assert!(
                cloudbuild.contains(&mapping),
                "cloudbuild.yaml does not map {mapping}"
            );
        } else {
            assert!(
                cloudbuild.contains(name),
                "cloudbuild.yaml does not mention the optional secret {name}"
            );
        }
    }
    for plain in service["env"].as_sequence().unwrap() {
        let name = plain["name"].as_str().unwrap();
        if let Some(deployed) = plain["deployed"].as_str() {
            assert!(
                cloudbuild.contains(&format!("{name}={deployed}")),
                "architecture.yaml says {name}={deployed} when deployed; cloudbuild.yaml disagrees"
            );
        }
        assert!(
            !cloudbuild.contains(&format!("{name}=projects/")),
            "{name} is not a secret"
        );
    }
}

#[test]
fn declared_topics_are_the_ones_the_code_uses() {
    let doc = architecture();
    let service = service(&doc);
    let envelope = read("src/envelope.rs");
    let published = service["topics"]["publishes"]
        .as_sequence()
        .expect("topics.publishes");
    let consumed = service["topics"]["consumes"]
        .as_sequence()
        .expect("topics.consumes");
    let published: BTreeSet<_> = published
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let consumed: BTreeSet<_> = consumed
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for topic in [
        "internal.ingress.v1",
        "internal.egress.status.v1",
        "internal.deadletter.v1",
    ] {
        assert!(published.contains(topic), "{topic} is published");
        assert!(
            envelope.contains(&format!("\"{topic}\"")),
            "{topic} is a topic in envelope.rs"
        );
    }
    for topic in ["internal.egress.v1", "internal.egress.v1.<INSTANCE_ID>"] {
        assert!(consumed.contains(topic), "{topic} is consumed");
    }
    assert!(envelope.contains("\"internal.egress.v1\""));
}

#[tokio::test]
async fn every_documented_http_path_is_declared() {
    let doc = architecture();
    let service = service(&doc);
    let declared: BTreeSet<String> = service["http"]["paths"]
        .as_sequence()
        .expect("http.paths")
        .iter()
        .map(|p| p["path"].as_str().expect("path").to_owned())
        .collect();
    let app = spawn_app(None, &[]).await;
    let openapi: serde_json::Value = app
        .get("/api-docs/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let documented = openapi["paths"].as_object().expect("paths");
    let missing: Vec<_> = documented
        .keys()
        .filter(|p| !declared.contains(*p))
        .collect();
    assert!(
        missing.is_empty(),
        "served but missing from architecture.yaml http.paths: {missing:?}"
    );
    for path in ["/swagger-ui/", "/api-docs/openapi.json"] {
        assert!(declared.contains(path), "{path} is declared");
    }
    let health = &service["healthChecks"];
    for probe in ["startup", "liveness", "readiness"] {
        let path = health[probe]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{probe} probe path"));
        assert!(
            declared.contains(path),
            "the {probe} probe path {path} is declared"
        );
    }
}

/// `pattern` (a path, `dir/` for everything below it, or `*` within one file name) matches
/// `path`, as `.dockerignore` and `COPY` read them for the files this test cares about.
fn glob_matches(pattern: &str, path: &str) -> bool {
    if let Some(dir) = pattern.strip_suffix('/') {
        return path.starts_with(&format!("{dir}/"));
    }
    match pattern.split_once('*') {
        Some((prefix, suffix)) => {
            path.len() >= prefix.len() + suffix.len()
                && path.starts_with(prefix)
                && path.ends_with(suffix)
                && !path[prefix.len()..path.len() - suffix.len()].contains('/')
        }
        None => pattern == path,
    }
}

#[test]
fn the_image_build_gets_every_file_the_code_compiles_in() {
    let dockerignore = read(".dockerignore");
    let admitted: Vec<&str> = dockerignore
        .lines()
        .filter_map(|line| line.trim().strip_prefix('!'))
        .collect();
    let dockerfile = read("Dockerfile");
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("COPY "))
        .filter(|args| !args.starts_with("--from"))
        .flat_map(|args| {
            let parts: Vec<&str> = args.split_whitespace().collect();
            parts[..parts.len().saturating_sub(1)].to_vec()
        })
        .collect();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut included = 0;
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let mut rest = source.as_str();
        while let Some(at) = rest.find("include_str!(\"") {
            rest = &rest[at + "include_str!(\"".len()..];
            let literal = &rest[..rest.find('"').expect("literal ends")];
            let path = file.parent().unwrap().join(literal);
            let path = path
                .canonicalize()
                .unwrap_or_else(|e| panic!("{literal}: {e}"));
            let relative = path
                .strip_prefix(root().canonicalize().unwrap())
                .expect("inside the repository")
                .to_string_lossy()
                .into_owned();
            assert!(
                admitted.iter().any(|p| glob_matches(p, &relative)),
                ".dockerignore keeps {relative} out of the image build"
            );
            assert!(
                copied.iter().any(|p| glob_matches(p, &relative)),
                "the Dockerfile does not COPY {relative}"
            );
            included += 1;
        }
    }
    assert!(included >= 5, "the contract files are compiled in");
    assert!(glob_matches(
        "openapi/*.schema.json",
        "openapi/a.schema.json"
    ));
    assert!(!glob_matches(
        "openapi/*.schema.json",
        "openapi/x/a.schema.json"
    ));
    assert!(glob_matches("src/", "src/main.rs"));
}

/// The shell scripts of `cloudbuild.yaml`'s steps, as Cloud Build runs them (`$$` is `$`).
fn cloudbuild_scripts() -> Vec<(String, String)> {
    let doc: Value =
        serde_yaml_ng::from_str(&read("cloudbuild.yaml")).expect("cloudbuild.yaml is valid YAML");
    doc["steps"]
        .as_sequence()
        .expect("steps: [...]")
        .iter()
        .map(|step| {
            let id = step["id"].as_str().unwrap_or_default().to_owned();
            let args: Vec<&str> = step["args"]
                .as_sequence()
                .map(|args| args.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            (id, args.join("\n").replace("$$", "$"))
        })
        .collect()
}

/// Every `NAME=` in a deploy script that names a variable of the service (upper case; Cloud
/// Build's `_SUBSTITUTIONS` start with `_`, and the shell's own `IFS` is no setting), with what
/// follows the `=` up to the next separator.
fn assignments(script: &str) -> Vec<(String, String)> {
    let script: String = script
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect();
    let script = script.as_str();
    let mut found = Vec::new();
    let bytes = script.as_bytes();
    for (at, _) in script.match_indices('=') {
        let start = script[..at]
            .rfind(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .map_or(0, |i| i + 1);
        let name = &script[start..at];
        let preceded_by_word = start > 0 && (bytes[start - 1] as char).is_ascii_alphanumeric();
        if name.len() < 3
            || name == "IFS"
            || name.starts_with('_')
            || preceded_by_word
            || name.starts_with(char::is_numeric)
        {
            continue;
        }
        let value: String = script[at + 1..]
            .chars()
            .take_while(|c| !matches!(c, ',' | '"' | '@' | '\n' | ' ' | ')'))
            .collect();
        found.push((name.to_owned(), value));
    }
    found
}

#[test]
fn cloudbuild_sets_only_variables_the_code_reads_and_secrets_only_from_secret_manager() {
    let doc = architecture();
    let service = service(&doc);
    let code = vars_read_by_code();
    let secrets: BTreeSet<String> = names(&service["secrets"], "secrets");
    let scripts = cloudbuild_scripts();
    let deploy = &scripts
        .iter()
        .find(|(id, _)| id == "deploy")
        .expect("a deploy step")
        .1;

    let mut set_plain = BTreeSet::new();
    let mut set_secret = BTreeSet::new();
    // The steps that configure the service (the build steps pass Docker its own arguments).
    for (id, script) in scripts.iter().filter(|(_, s)| s.contains("gcloud run")) {
        for (name, value) in assignments(script) {
            assert!(
                code.contains(&name),
                "cloudbuild.yaml step {id} sets {name}, which the service never reads"
            );
            if value.starts_with("ingress-egress-") && value.ends_with(":latest") {
                set_secret.insert(name);
            } else {
                assert!(
                    !secrets.contains(&name),
                    "step {id} sets the secret {name} as a plain variable"
                );
                set_plain.insert(name);
            }
        }
    }
    // Optional secrets are mapped through a helper that checks the secret exists.
    for line in deploy.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("optional_secret ") {
            let mut words = rest.split_whitespace();
            let (name, secret) = (words.next().unwrap(), words.next().unwrap());
            assert!(code.contains(name), "{name} is not read by the service");
            let declared = service["secrets"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
                .unwrap_or_else(|| panic!("{name} is mapped but not a declared secret"));
            assert_eq!(declared["secretManager"]["name"], secret);
            assert_eq!(declared["required"], false, "{name} is mapped as optional");
            set_secret.insert(name.to_owned());
        }
    }
    assert_eq!(
        set_secret, secrets,
        "cloudbuild.yaml maps exactly the secrets architecture.yaml declares"
    );
    for required in [
        "APP_ENV",
        "PUBLIC_BASE_URL",
        "TWILIO_ACCOUNT_SID",
        "OUTBOX_DIR",
    ] {
        assert!(
            set_plain.contains(required),
            "{required} is not set: {set_plain:?}"
        );
    }
    assert!(
        deploy.contains("--update-env-vars="),
        "console edits survive a deploy"
    );
    assert!(
        !deploy.contains("--set-env-vars"),
        "--set-env-vars would drop console edits"
    );
    for flag in [
        "--vpc-connector=",
        "--network=",
        "--subnet=",
        "--vpc-egress=",
    ] {
        assert!(
            deploy.contains(flag),
            "the deploy can reach a private broker ({flag})"
        );
    }
    let build = &scripts.iter().find(|(id, _)| id == "build").unwrap().1;
    assert!(
        build.contains("--cache-from=") && build.contains(":deps"),
        "{build}"
    );
}

#[test]
fn each_default_is_written_the_same_way_everywhere() {
    let doc = architecture();
    let service = service(&doc);
    let readme = read("README.md");
    let example = read(".env.example");
    let mut compared = 0;
    for entry in service["env"].as_sequence().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let Some(default) = entry["default"]
            .as_str()
            // A value one could write (not a sentence, not a `<placeholder>`).
            .filter(|d| !d.is_empty() && !d.contains(' ') && !d.contains('<'))
        else {
            continue;
        };
        let row = readme
            .lines()
            .find(|line| line.starts_with(&format!("| `{name}`")))
            .unwrap_or_else(|| panic!("README.md has no row for {name}"));
        let cell = row.split(" | ").nth(1).unwrap_or_default();
        assert_eq!(
            cell,
            format!("`{default}`"),
            "README.md's default of {name}"
        );
        let line = example
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .find(|l| l.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!(".env.example has no line for {name}"));
        assert_eq!(
            line,
            format!("{name}={default}"),
            ".env.example's default of {name}"
        );
        compared += 1;
    }
    assert!(compared > 15, "only {compared} defaults compared");
    let cloudbuild = read("cloudbuild.yaml");
    assert!(cloudbuild.contains("_TWILIO_MAX_SEND_RATE: \"1\""));
}

#[test]
fn the_deploy_guide_and_the_readme_agree_on_which_secrets_are_required() {
    let doc = architecture();
    let service = service(&doc);
    let guide = read("docs/deploy.md");
    let readme = read("README.md");
    for entry in service["secrets"].as_sequence().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let required = entry["required"].as_bool().unwrap();
        let row = guide
            .lines()
            .find(|line| line.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("docs/deploy.md's secret table has no row for {name}"));
        let cell = row.split(" | ").nth(2).unwrap_or_default();
        assert_eq!(
            cell.starts_with("yes"),
            required,
            "docs/deploy.md says {cell:?} for {name}; architecture.yaml says required: {required}"
        );
        let readme_row = readme
            .lines()
            .find(|line| line.starts_with("| `") && line.contains(&format!("`{name}`")))
            .unwrap_or_else(|| panic!("README.md has no row for {name}"));
        assert!(
            readme_row.contains('🔒'),
            "README.md marks {name} as a secret"
        );
        if !required {
            assert!(
                readme_row.contains("unset") || readme_row.contains("optional"),
                "README.md shows {name} as optional: {readme_row}"
            );
        }
    }
}

/// `cloudbuild.yaml`'s deploy step with its substitutions filled in, `/workspace` moved to
/// `workspace`, run by bash against a stub `gcloud` that records its arguments. Returns the
/// arguments of every `gcloud` call, one call per entry.
fn run_deploy_step(
    workspace: &Path,
    substitutions: &[(&str, &str)],
    existing: &[&str],
) -> Vec<Vec<String>> {
    let doc: Value = serde_yaml_ng::from_str(&read("cloudbuild.yaml")).unwrap();
    let mut values: std::collections::BTreeMap<String, String> = doc["substitutions"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (name, value) in substitutions {
        values.insert((*name).to_owned(), (*value).to_owned());
    }
    let (_, script) = cloudbuild_scripts()
        .into_iter()
        .find(|(id, _)| id == "deploy")
        .unwrap();
    let script = script.strip_prefix("-c\n").expect("a bash -c step");
    let mut script = script.replace("/workspace", &workspace.display().to_string());
    for (name, value) in &values {
        script = script.replace(&format!("${{{name}}}"), value);
    }
    script = script
        .replace("$PROJECT_ID", "my-project")
        .replace("$PROJECT_NUMBER", "123456789")
        .replace("$SHORT_SHA", "abc1234");
    let calls = workspace.join("gcloud-calls");
    let stub = workspace.join("gcloud");
    std::fs::write(
        &stub,
        format!(
            "#!/usr/bin/env bash\n\
             printf '%s\\x1f' \"$@\" >> {calls}; printf '\\n' >> {calls}\n\
             case \"$1 $2\" in\n\
               'secrets describe') for s in {existing}; do [ \"$3\" = \"$s\" ] && exit 0; done; exit 1 ;;\n\
               'run services') echo https://ingress-egress-abc123-ew.a.run.app ;;\n\
             esac\n",
            calls = calls.display(),
            existing = existing.join(" "),
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&stub)
        .status()
        .unwrap();
    let path = format!(
        "{}:{}",
        workspace.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = std::process::Command::new("bash")
        .args(["-c", &script])
        .env("PATH", path)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "the deploy step failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .map(|line| {
            line.split('\u{1f}')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[test]
fn the_deploy_step_passes_cloud_run_what_it_needs() {
    let workspace = tempfile::tempdir().unwrap();
    let calls = run_deploy_step(
        workspace.path(),
        &[
            ("_TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000001"),
            ("_TWILIO_API_KEY", "SK00000000000000000000000000000001"),
            ("_TWILIO_PHONE_NUMBER", "+15005550006"),
            ("_VPC_CONNECTOR", "broker-connector"),
        ],
        &["ingress-egress-debug-token"],
    );
    let deploy = calls
        .iter()
        .find(|call| call.starts_with(&["run".to_owned(), "deploy".to_owned()]))
        .expect("gcloud run deploy was called");
    let flag = |name: &str| {
        deploy
            .iter()
            .find_map(|arg| arg.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing from {deploy:?}"))
            .to_owned()
    };
    let env = flag("--update-env-vars");
    let pairs: Vec<&str> = env
        .strip_prefix("^@^")
        .expect("@-separated")
        .split('@')
        .collect();
    for expected in [
        "APP_ENV=production",
        "TWILIO_PHONE_NUMBER=+15005550006",
        "TWILIO_MAX_SEND_RATE=1",
        "PUBLIC_BASE_URL=https://ingress-egress-abc123-ew.a.run.app",
        "TWILIO_STATUS_CALLBACK_URL=https://ingress-egress-abc123-ew.a.run.app/webhooks/twilio/status",
    ] {
        assert!(pairs.contains(&expected), "{expected} not in {pairs:?}");
    }
    assert!(
        !pairs.iter().any(|p| p.starts_with("TWILIO_IDENTITY=")),
        "an empty substitution leaves its variable alone: {pairs:?}"
    );
    let secrets = flag("--set-secrets");
    assert!(
        secrets.contains("AMQP_URL=ingress-egress-amqp-url:latest"),
        "{secrets}"
    );
    assert!(
        secrets.contains("DEBUG_TOKEN=ingress-egress-debug-token:latest"),
        "{secrets}"
    );
    assert!(
        !secrets.contains("OPERATOR_TOKEN"),
        "the secret does not exist: {secrets}"
    );
    assert_eq!(flag("--vpc-connector"), "broker-connector");
    assert_eq!(flag("--vpc-egress"), "private-ranges-only");

    // Direct VPC egress instead of a connector; both at once is refused.
    let calls = run_deploy_step(
        tempfile::tempdir().unwrap().path(),
        &[
            ("_TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000001"),
            ("_TWILIO_API_KEY", "SK00000000000000000000000000000001"),
            ("_VPC_NETWORK", "default"),
            ("_VPC_SUBNET", "run-subnet"),
        ],
        &[],
    );
    let deploy = calls
        .iter()
        .find(|c| c[0] == "run" && c[1] == "deploy")
        .unwrap();
    assert!(
        deploy.contains(&"--network=default".to_owned()),
        "{deploy:?}"
    );
    assert!(
        deploy.contains(&"--subnet=run-subnet".to_owned()),
        "{deploy:?}"
    );
    assert!(
        !deploy.iter().any(|a| a.starts_with("--vpc-connector")),
        "{deploy:?}"
    );
}

//! The command line: `legate -t -c FILE` checks a config the way `nutcracker -t` does.

mod common;

use std::process::Command;

fn check(yaml: &str) -> (bool, String) {
    let dir = common::scratch_dir();
    let file = dir.join("conf.yml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_legate"))
        .arg("-t")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn valid_twemproxy_config_passes() {
    let (ok, text) = check(include_str!("../config/twemproxy.yml"));
    assert!(ok, "{text}");
    assert!(text.contains("syntax is ok"), "{text}");
}

#[test]
fn example_config_passes() {
    let (ok, text) = check(include_str!("../config/example.yml"));
    assert!(ok, "{text}");
}

#[test]
fn sentinel_example_passes() {
    // -t checks the file only: no sentinel is asked.
    let (ok, text) = check(include_str!("../config/sentinel.yml"));
    assert!(ok, "{text}");
    let (ok, text) = check(
        "s:\n  listen: 127.0.0.1:1\n  redis: true\n  sentinels: ['127.0.0.1:26379']\n  servers: ['127.0.0.1:6379:1']\n",
    );
    assert!(!ok && text.contains("master-name:weight"), "{text}");
}

#[test]
fn cluster_example_passes() {
    // -t checks the file only: no node is asked.
    let (ok, text) = check(include_str!("../config/cluster.yml"));
    assert!(ok, "{text}");
    let (ok, text) = check("c:\n  listen: 127.0.0.1:1\n  redis: true\n  hash: md5\n  cluster: ['127.0.0.1:7000']\n");
    assert!(!ok && text.contains("'hash'"), "{text}");
}

#[test]
fn tls_example_passes_once_its_certificate_files_exist() {
    let example = include_str!("../config/tls-l4.yml");
    // As shipped, the files it names do not exist here, and -t says which.
    let (ok, text) = check(example);
    assert!(
        !ok && text.contains("pool 'managed-redis', key 'tls.ca_file'"),
        "{text}"
    );
    // With real files at those names, the example is valid.
    let p = common::pki::pki();
    let (cert, key, ca) = (p.server_cert.display(), p.server_key.display(), p.ca.display());
    let real = example
        .replace("/etc/legate/tls/ca.pem", &ca.to_string())
        .replace("/etc/legate/tls/clients-ca.pem", &ca.to_string())
        .replace("/etc/legate/tls/client.pem", &p.client_cert.display().to_string())
        .replace("/etc/legate/tls/client.key", &p.client_key.display().to_string())
        .replace("/etc/legate/tls/legate.pem", &cert.to_string())
        .replace("/etc/legate/tls/legate.key", &key.to_string());
    assert!(
        !real.contains("/etc/legate"),
        "a path of the example is not covered here"
    );
    let (ok, text) = check(&real);
    assert!(ok, "{text}");
}

#[test]
fn errors_name_the_pool_and_key_and_exit_1() {
    let cases = [
        (
            "alpha:\n  listen: 127.0.0.1:1\n  hash: nope\n  servers:\n    - 127.0.0.1:2:1\n",
            "pool 'alpha', key 'hash'",
        ),
        (
            "beta:\n  listen: 127.0.0.1:1\n  bogus: 1\n  servers:\n    - 127.0.0.1:2:1\n",
            "pool 'beta', key 'bogus'",
        ),
        (
            "gamma:\n  listen: 127.0.0.1:1\n  servers:\n    - 127.0.0.1:notaport:1\n",
            "pool 'gamma', key 'servers'",
        ),
        (
            "delta:\n  listen: 127.0.0.1:1\n  distribution: ring\n  servers:\n    - 127.0.0.1:2:1\n",
            "pool 'delta', key 'distribution'",
        ),
    ];
    for (yaml, want) in cases {
        let (ok, text) = check(yaml);
        assert!(!ok, "accepted:\n{yaml}");
        assert!(text.contains(want), "expected {want:?} in: {text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_legate"))
        .args(["-t", "-c", "/nonexistent/legate.yml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn kubernetes_configmap_config_passes() {
    let manifest = include_str!("../config/kubernetes/legate-sidecar.yaml");
    let start = manifest.find("  legate.yml: |\n").expect("ConfigMap holds legate.yml") + "  legate.yml: |\n".len();
    let body: String = manifest[start..]
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let (ok, text) = check(&body);
    assert!(ok, "{text}\n{body}");
}

//! `brb status`, `brb watch` and `brb audit` print people's reasons as text in every script;
//! only what would act on the terminal is escaped.
#![allow(clippy::unwrap_used)]

use brb_e2e::{ServerProc, cli};

#[test]
fn reasons_in_any_script_print_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let token_file = dir.path().join("data/admin-token");
    let env = [
        ("BRB_URL", server.url.as_str()),
        ("BRB_TOKEN_FILE", token_file.to_str().unwrap()),
    ];
    let run = |args: &[&str]| {
        let o = cli(&home, &env, args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };

    for reason in [
        // Hindi: vowel signs, a nukta and a virama (combining marks).
        "डेटाबेस पर बहुत ज़्यादा लोड है",
        // Thai: tone marks and vowels above and below.
        "ฐานข้อมูลทำงานหนักเกินไป",
        // Emoji joined by zero-width joiners, and a skin tone modifier.
        "👩\u{200d}💻 on it 👨\u{200d}👩\u{200d}👧 👍🏽",
    ] {
        run(&["pause", "--reason", reason, "--wait", "0"]);
        let out = run(&["status"]);
        assert!(out.contains(&format!(": \"{reason}\"")), "{out}");
        assert!(!out.contains("\\u{"), "{out}");
        let out = run(&["audit", "--limit", "1"]);
        assert!(out.contains(&format!(": \"{reason}\"")), "{out}");
        run(&["resume", "--wait", "0"]);
    }

    // A reason that tries to drive the terminal: clear the screen, fake a line, reverse the
    // rest of the line. Printed escaped, inert.
    let nasty = "ok\u{1b}[2J\r\nworkers running\u{202e}txet";
    run(&["pause", "--reason", nasty, "--wait", "0"]);
    let out = run(&["status"]);
    assert!(
        out.contains(r#": "ok\u{1b}[2J\r\nworkers running\u{202e}txet""#),
        "{out}"
    );
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{202e}'),
        "{out:?}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
}

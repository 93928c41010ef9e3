use crate::support::*;

#[test]
fn init_creates_a_committed_repository_that_validates() {
    let sandbox = Sandbox::bare_dir();
    let target = sandbox.root().join("host");
    let run = sandbox.run(&["init", target.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("with 13 resources"), "{}", run.stdout);

    let repo = git2::Repository::open(&target).unwrap();
    let head = repo.head().unwrap();
    assert_eq!(head.shorthand().unwrap(), "main");
    let statuses = repo.statuses(None).unwrap();
    assert_eq!(statuses.len(), 0, "everything init writes is committed");
    let tree = head.peel_to_tree().unwrap();
    assert!(tree.get_path(std::path::Path::new("desired/services.yaml")).is_ok());
    assert!(tree.get_path(std::path::Path::new("crds/service.schema.json")).is_ok());

    let run = sandbox.run(&["validate", "--repo", target.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("valid: 13 resource(s) in 7 file(s)"),
        "{}",
        run.stdout
    );
}

#[test]
fn init_refuses_a_directory_that_is_not_empty() {
    let sandbox = Sandbox::bare_dir();
    std::fs::write(sandbox.root().join("keep.txt"), "mine").unwrap();
    let run = sandbox.run(&["init", sandbox.root().to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("not empty"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(sandbox.root().join("keep.txt")).unwrap(),
        "mine"
    );
    assert!(!sandbox.root().join(".git").exists());
}

#[test]
fn the_schema_links_in_init_files_resolve() {
    let sandbox = Sandbox::bare_dir();
    let target = sandbox.root().join("host");
    assert_eq!(sandbox.run(&["init", target.to_str().unwrap()]).code, 0);
    for entry in std::fs::read_dir(target.join("desired")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        let schema = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{} does not start with a schema line", path.display()));
        assert!(
            path.parent().unwrap().join(schema).is_file(),
            "{} links to missing {schema}",
            path.display()
        );
    }
}

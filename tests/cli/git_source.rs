use crate::support::*;

const SERVICE_A: &str = "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {name: a}\nspec: {command: [\"true\"]}\n";
const SERVICE_B: &str = "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {name: b}\nspec: {command: [\"true\"]}\n";

fn names(run: &Run) -> Vec<String> {
    assert_eq!(run.code, 0, "{run:?}");
    run.json()["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn reads_the_commit_not_uncommitted_edits() {
    let sandbox = Sandbox::new();
    sandbox.write("a.yaml", SERVICE_A);
    sandbox.commit("a");
    sandbox.write("b.yaml", SERVICE_B);
    sandbox.write("a.yaml", "this: [is not committed\n");
    assert_eq!(names(&sandbox.run(&["validate", "--output", "json"])), ["a"]);
}

#[test]
fn worktree_sees_the_edits() {
    let sandbox = Sandbox::new();
    sandbox.write("a.yaml", SERVICE_A);
    let commit = sandbox.commit("a");
    sandbox.write("b.yaml", SERVICE_B);
    let run = sandbox.run(&["validate", "--worktree", "--output", "json"]);
    assert_eq!(names(&run), ["a", "b"]);
    assert_eq!(run.json()["worktree"], true);
    assert_eq!(run.json()["commit"], commit.as_str());
    let text = sandbox.run(&["validate", "--worktree"]);
    assert!(
        text.stdout
            .contains(&format!("the working tree over commit {}", &commit[..12])),
        "{}",
        text.stdout
    );
}

#[test]
fn worktree_leaves_out_git_ignored_files() {
    let sandbox = Sandbox::new();
    sandbox.write(".gitignore", "scratch/\n");
    sandbox.write("a.yaml", SERVICE_A);
    sandbox.write("scratch/broken.yaml", "{{{");
    sandbox.commit("a");
    assert_eq!(
        names(&sandbox.run(&["validate", "--worktree", "--output", "json"])),
        ["a"]
    );
}

#[test]
fn ref_selects_an_older_commit_a_branch_or_a_tag() {
    let sandbox = Sandbox::new();
    sandbox.write("a.yaml", SERVICE_A);
    let first = sandbox.commit("a");
    sandbox.tag("v1");
    sandbox.write("b.yaml", SERVICE_B);
    let second = sandbox.commit("b");
    assert_eq!(names(&sandbox.run(&["validate", "--output", "json"])), ["a", "b"]);
    assert_eq!(
        names(&sandbox.run(&["validate", "--output", "json", "--ref", &first])),
        ["a"]
    );
    assert_eq!(
        names(&sandbox.run(&["validate", "--output", "json", "--ref", &first[..8]])),
        ["a"]
    );
    assert_eq!(
        names(&sandbox.run(&["validate", "--output", "json", "--ref", "v1"])),
        ["a"]
    );
    assert_eq!(
        names(&sandbox.run(&["validate", "--output", "json", "--ref", "main"])),
        ["a", "b"]
    );
    assert_eq!(
        names(&sandbox.run(&["validate", "--output", "json", "--ref", "HEAD~1"])),
        ["a"]
    );
    let run = sandbox.run(&["validate", "--output", "json", "--ref", "v1"]);
    assert_eq!(run.json()["commit"], first.as_str());
    let run = sandbox.run(&["validate", "--output", "json"]);
    assert_eq!(run.json()["commit"], second.as_str());
}

#[test]
fn an_unknown_ref_is_an_error() {
    let sandbox = Sandbox::new();
    sandbox.write("a.yaml", SERVICE_A);
    sandbox.commit("a");
    let run = sandbox.run(&["validate", "--ref", "no-such-branch"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("ref `no-such-branch` does not name a commit"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_empty_repository_is_an_error_not_an_empty_state() {
    let sandbox = Sandbox::new();
    sandbox.write("a.yaml", SERVICE_A);
    let run = sandbox.run(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("the repository has no commits yet"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
    // A preview of the uncommitted files still works.
    assert_eq!(
        names(&sandbox.run(&["validate", "--worktree", "--output", "json"])),
        ["a"]
    );
}

#[test]
fn a_directory_that_is_not_a_repository_is_an_error() {
    let sandbox = Sandbox::bare_dir();
    let run = sandbox.run(&["validate"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("not a git repository"), "{}", run.stderr);
    let json = sandbox.run(&["validate", "--output", "json"]);
    assert!(json.json()["error"].as_str().unwrap().contains("not a git repository"));
}

#[test]
fn path_may_name_a_subdirectory_or_one_file() {
    let sandbox = Sandbox::new();
    sandbox.write("hosts/mini/a.yaml", SERVICE_A);
    sandbox.write("hosts/other/b.yaml", SERVICE_B);
    sandbox.commit("two hosts");
    assert_eq!(
        names(&sandbox.run(&["validate", "--output", "json", "--path", "hosts/mini"])),
        ["a"]
    );
    assert_eq!(
        names(&sandbox.run(&["validate", "--output", "json", "--path", "./hosts/other/b.yaml"])),
        ["b"]
    );
    assert_eq!(
        names(&sandbox.run(&["validate", "--output", "json", "--path", "hosts"])),
        ["a", "b"]
    );
    let run = sandbox.run(&["validate", "--path", "../elsewhere"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("must be a relative path inside the repository"),
        "{}",
        run.stderr
    );
}

#[test]
fn multi_document_files_and_yml_extensions_are_read() {
    let sandbox = Sandbox::new();
    sandbox.write("all.yml", format!("---\n{SERVICE_A}---\n{SERVICE_B}...\n"));
    sandbox.commit("multi");
    let run = sandbox.run(&["validate", "--output", "json"]);
    assert_eq!(names(&run), ["a", "b"]);
    assert_eq!(run.json()["resources"][1]["line"], 7);
}

#[test]
fn a_missing_object_in_the_repository_is_an_error() {
    let sandbox = Sandbox::new();
    sandbox.write("a.yaml", SERVICE_A);
    sandbox.commit("a");
    // Delete the blob of a.yaml from the object store, as a broken clone would lack it.
    let repo = git2::Repository::open(sandbox.repo()).unwrap();
    let blob = repo
        .head()
        .unwrap()
        .peel_to_tree()
        .unwrap()
        .get_name("a.yaml")
        .unwrap()
        .id()
        .to_string();
    let object = sandbox.repo().join(".git/objects").join(&blob[..2]).join(&blob[2..]);
    std::fs::remove_file(object).unwrap();
    let run = sandbox.run(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("a.yaml"), "{}", run.stderr);
    assert!(
        run.stdout.is_empty(),
        "a broken source must not look like a state: {}",
        run.stdout
    );
}

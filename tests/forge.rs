//! The forge contracts (tests/common/forge.rs) the loopback forge of issue 16 checks
//! every request against: read from the forges' own published descriptions, they
//! accept the forges' own examples and the requests the API documents, and refuse a
//! request that leaves out a required field, gives one the wrong type, or names one
//! the API does not have.

mod common;

use common::forge::{operations, Operation};
use serde_json::json;

fn operation<'a>(all: &'a [Operation], id: &str) -> &'a Operation {
    all.iter()
        .find(|o| o.id == id)
        .unwrap_or_else(|| panic!("no operation {id}"))
}

#[test]
fn every_github_example_matches_its_published_schema_but_the_one_github_lists() {
    let github = operations("github");
    assert_eq!(github.len(), 12, "the 12 operations of the README");
    let (mut checked, mut known) = (0, 0);
    for op in &github {
        for (status, (schema, examples)) in &op.responses {
            for example in examples {
                let result = op.check_response(*status, example);
                if schema.is_some() {
                    checked += 1;
                }
                // GitHub's README: `requested_teams[0]` has no `type` in the pull
                // request examples, which team-simple requires.
                match result {
                    Err(error)
                        if op.id.starts_with("pulls/") && error.contains("requested_teams/0") =>
                    {
                        assert!(error.contains("`type` is missing"), "{}: {error}", op.id);
                        known += 1;
                    }
                    other => assert_eq!(other, Ok(()), "{} {status}", op.id),
                }
            }
        }
    }
    assert!(checked >= 12, "{checked} examples checked");
    // pulls/create, get, list and update, as the README says.
    assert_eq!(known, 4, "the known problem is where GitHub says it is");
}

#[test]
fn a_pull_request_body_is_checked_against_github_s_schema() {
    let github = operations("github");
    let create = operation(&github, "pulls/create");
    assert_eq!(
        (create.method.as_str(), create.path.as_str()),
        ("POST", "/repos/{owner}/{repo}/pulls")
    );
    assert_eq!(create.path_params, ["owner", "repo"]);
    let body = json!({"title": "alice: deployment web", "head": "kubescribe/alice/1a2b3c", "base": "main", "body": "..."});
    assert_eq!(create.check_body(Some(&body)), Ok(()));

    let mut missing = body.clone();
    missing.as_object_mut().unwrap().remove("head");
    assert_eq!(
        create.check_body(Some(&missing)),
        Err("body: the required property `head` is missing".to_owned())
    );
    let mut wrong = body.clone();
    wrong["draft"] = json!("yes");
    assert_eq!(
        create.check_body(Some(&wrong)),
        Err("body/draft: \"yes\" is not of type boolean".to_owned())
    );
    let mut misspelt = body.clone();
    misspelt["bsae"] = json!("main");
    assert_eq!(
        create.check_body(Some(&misspelt)),
        Err("body/bsae: not a property the schema declares".to_owned())
    );
    assert_eq!(
        create.check_body(None),
        Err("the request has no body".to_owned())
    );
    let update = operation(&github, "pulls/update");
    assert_eq!(update.check_body(Some(&json!({"state": "closed"}))), Ok(()));
    assert!(update
        .check_body(Some(&json!({"state": "merged"})))
        .unwrap_err()
        .contains("is not one of"));
}

#[test]
fn gitea_s_schemas_resolve_their_references_and_check_a_pull_request() {
    let gitea = operations("gitea");
    assert_eq!(gitea.len(), 13, "the 13 operations of the README");
    let create = operation(&gitea, "repoCreatePullRequest");
    assert_eq!(
        create.check_body(Some(
            &json!({"title": "t", "head": "kubescribe/alice/1", "base": "main"})
        )),
        Ok(())
    );
    assert!(create
        .check_body(Some(&json!({"title": 7})))
        .unwrap_err()
        .contains("is not of type string"));
    // A response is built from the schema (Gitea publishes no examples); one with
    // a wrong type in a referenced definition is refused.
    let get = operation(&gitea, "repoGetPullRequest");
    assert_eq!(
        get.check_response(200, &json!({"number": 3, "state": "open", "merged": false})),
        Ok(())
    );
    assert!(get
        .check_response(200, &json!({"base": {"repo": {"parent": {"id": "x"}}}}))
        .unwrap_err()
        .contains("is not of type integer"));
}

//! The committed CRD YAML must be exactly what the types generate, or `kubectl apply -k deploy/` would
//! install a schema the operator does not speak.

/// This crate's directory. Cargo's run-time value comes first: a test binary reused from a shared target
/// directory may have been built in another checkout.
fn crate_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

#[test]
fn committed_crds_match_the_types() {
    let dir = crate_dir();
    for (file, crd) in ouroboros_crds::crd::all() {
        let generated = ouroboros_crds::crd::to_yaml(&crd).expect("serialise CRD");
        let committed = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("crds/{file} is missing ({e}); run `make crds`"));
        pretty_assertions::assert_eq!(
            committed,
            generated,
            "crds/{file} is stale: run `make crds` and commit the result"
        );
        // The Helm chart ships its own copy, which must be the same.
        let chart = std::fs::read_to_string(dir.join("../deploy/helm/ouroboros/crds").join(file))
            .unwrap_or_else(|e| {
                panic!("deploy/helm/ouroboros/crds/{file} is missing ({e}); run `make crds`")
            });
        assert!(
            chart == generated,
            "deploy/helm/ouroboros/crds/{file} is stale: run `make crds` and commit the result"
        );
    }
}

#[test]
fn every_schema_property_has_a_description() {
    // Field docs become `kubectl explain` output; an undocumented field is a hole in the API reference.
    fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let p = format!("{path}.{name}");
                // apiVersion/kind/metadata are Kubernetes' own.
                let inherited =
                    ["apiVersion", "kind", "metadata"].contains(&name.as_str()) && path.is_empty();
                // Types embedded from k8s-openapi carry their upstream docs at their own root.
                if prop.get("description").is_none() && !inherited {
                    missing.push(p.clone());
                }
                walk(&p, prop, missing);
            }
        }
        if let Some(items) = v.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for (file, crd) in ouroboros_crds::crd::all() {
        let json = serde_json::to_value(&crd).expect("CRD to JSON");
        let schema = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        walk(file, schema, &mut missing);
    }
    assert!(
        missing.is_empty(),
        "properties without a description: {missing:#?}"
    );
}

#[test]
fn committed_api_reference_matches_the_types() {
    let path = crate_dir().join("../docs/api.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    pretty_assertions::assert_eq!(
        committed,
        ouroboros_crds::crd::api_reference_markdown(),
        "docs/api.md is stale: run `make crds` and commit the result"
    );
}

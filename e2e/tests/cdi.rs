//! CDI devices as device plugins and DRA drivers hand them to kubelet: specs in a vendor
//! layout, requested by `CDI_devices` and by `cdi.k8s.io/` annotations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use berth_e2e::DaemonOptions;
use berth_e2e::env::BusyboxEnv;
use berth_proto::cri;
use tonic::Code;

#[tokio::test]
async fn cdi_devices_from_vendor_specs_are_applied() {
    let specs = tempfile::tempdir().unwrap();
    let runtime_specs = tempfile::tempdir().unwrap();
    let conf = specs.path().join("example.conf");
    std::fs::write(&conf, "from the vendor\n").unwrap();
    // A vendor's generated spec (JSON), in the static directory.
    std::fs::write(
        specs.path().join("example.com-dev.json"),
        format!(
            r#"{{"cdiVersion":"0.6.0","kind":"example.com/dev",
              "containerEdits":{{"env":["EXAMPLE_DRIVER=1"]}},
              "devices":[
                {{"name":"null0","containerEdits":{{
                   "deviceNodes":[{{"path":"/dev/example-null","hostPath":"/dev/null","permissions":"rw","fileMode":438}}],
                   "mounts":[{{"hostPath":"{}","containerPath":"/etc/example.conf","options":["ro","nosuid","nodev","bind"]}}],
                   "env":["EXAMPLE_VISIBLE=null0"],
                   "additionalGIDs":[4321]}}}},
                {{"name":"hooked","containerEdits":{{"hooks":[{{"hookName":"createContainer","path":"/usr/bin/true"}}]}}}}
              ]}}"#,
            conf.display()
        ),
    )
    .unwrap();
    // A DRA driver's spec (YAML) in the runtime directory, of higher priority.
    std::fs::write(
        runtime_specs.path().join("claim.yaml"),
        "cdiVersion: 0.7.0\nkind: example.com/claim\ndevices:\n  - name: zero\n    containerEdits:\n      deviceNodes:\n        - path: /dev/example-zero\n          hostPath: /dev/zero\n      env:\n        - CLAIM=zero\n",
    )
    .unwrap();
    std::fs::write(runtime_specs.path().join("broken.json"), "{not json").unwrap();
    let Some(mut env) = BusyboxEnv::start_with(DaemonOptions {
        extra_config: format!(
            "\n[cdi]\nspec_dirs = [{:?}, {:?}]\n",
            specs.path().display().to_string(),
            runtime_specs.path().display().to_string()
        ),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let p = env.c.run_pod(env.pod_config("cdi", "devs")).await;
    let mut c = env.container_config("user", &["sleep", "1000"]);
    c.cdi_devices = vec![cri::CdiDevice {
        name: "example.com/dev=null0".into(),
    }];
    c.annotations = HashMap::from([(
        "cdi.k8s.io/claim".to_string(),
        "example.com/claim=zero".to_string(),
    )]);
    let id = env.c.run_container(&p, c).await;
    let out = env
        .c
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "echo x > /dev/example-null && head -c 3 /dev/example-zero | od -An -tx1 && cat /etc/example.conf && echo $EXAMPLE_DRIVER $EXAMPLE_VISIBLE $CLAIM && id -G && stat -c %a /dev/example-null",
            ],
            10,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.exit_code,
        0,
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0].trim(), "00 00 00");
    assert_eq!(lines[1], "from the vendor");
    assert_eq!(lines[2], "1 null0 zero");
    assert!(lines[3].split_whitespace().any(|g| g == "4321"), "{text}");
    assert_eq!(lines[4], "666");
    // The mount is read-only.
    let w = env
        .c
        .exec(&id, &["sh", "-c", "echo y > /etc/example.conf"], 10)
        .await
        .unwrap();
    assert_ne!(w.exit_code, 0);
    // Refused with the name, nothing created: an unknown device (the broken spec is named),
    // a spec asking for a hook.
    for (name, needle) in [
        ("example.com/dev=nope", "broken.json"),
        ("example.com/dev=hooked", "hook"),
        ("not-qualified", "fully qualified"),
    ] {
        let mut c = env.container_config("bad", &["true"]);
        c.cdi_devices = vec![cri::CdiDevice { name: name.into() }];
        let e = env.c.create(&p, c).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(needle), "{needle}: {e:?}");
    }
    let listed = env
        .c
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1);
    env.c.stop_and_remove_pod(&p).await;
}

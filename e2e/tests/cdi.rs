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
                {{"name":"other","containerEdits":{{"env":["OTHER=1"]}}}}
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
    // A spec whose hook names no OCI point is refused whole.
    std::fs::write(
        runtime_specs.path().join("badhook.json"),
        r#"{"cdiVersion":"0.6.0","kind":"example.com/badhook","devices":[{"name":"x","containerEdits":{"hooks":[{"hookName":"preStart","path":"/bin/true"}]}}]}"#,
    )
    .unwrap();
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
    // a device of a spec refused for its hook.
    for (name, needle) in [
        ("example.com/dev=nope", "broken.json"),
        ("example.com/badhook=x", "not an OCI hook name"),
        ("not-qualified", "fully qualified"),
    ] {
        let mut c = env.container_config("bad", &["true"]);
        c.cdi_devices = vec![cri::CdiDevice { name: name.into() }];
        let e = env.c.create(&p, c).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(needle), "{needle}: {e:?}");
    }
    assert_eq!(env.c.containers().await.len(), 1);
    env.c.stop_and_remove_pod(&p).await;
}

/// A hook that saves the OCI state it reads to `out/<name>.json` (and its environment's
/// HOOK_ENV to `out/<name>.env`).
fn saving_hook(point: &str, out: &std::path::Path, name: &str) -> String {
    format!(
        r#"{{"hookName":"{point}","path":"/bin/sh","args":["sh","-c","cat > {0}/{name}.json; echo \"$HOOK_ENV\" > {0}/{name}.env"],"env":["HOOK_ENV=from-{name}"],"timeout":10}}"#,
        out.display()
    )
}

#[tokio::test]
async fn cdi_hooks_run_at_their_oci_points() {
    let specs = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    // createContainer as NVIDIA's `nvidia-ctk hook` does it: the state names the bundle,
    // the bundle's config.json the root, and the hook changes the root before pivot_root.
    let like_nvidia = specs.path().join("create-symlinks.sh");
    std::fs::write(
        &like_nvidia,
        format!(
            "#!/bin/sh\nstate=$(cat)\nprintf '%s' \"$state\" > {0}/create-container.json\nbundle=$(printf '%s' \"$state\" | sed -n 's/.*\"bundle\":\"\\([^\"]*\\)\".*/\\1/p')\nroot=$(sed -n 's/.*\"root\":{{\"path\":\"\\([^\"]*\\)\".*/\\1/p' \"$bundle/config.json\")\necho created-by-hook > \"$root/hooked\"\n",
            o.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &like_nvidia,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let hooks = [
        saving_hook("createRuntime", o, "create-runtime"),
        format!(
            r#"{{"hookName":"createContainer","path":"{}","args":["nvidia-ctk","hook","create-symlinks"]}}"#,
            like_nvidia.display()
        ),
        // Inside the container, after pivot_root: the image's /bin/sh.
        r#"{"hookName":"startContainer","path":"/bin/sh","args":["sh","-c","cat > /start-state.json"]}"#.to_owned(),
        saving_hook("poststart", o, "poststart"),
        saving_hook("poststop", o, "poststop"),
    ];
    std::fs::write(
        specs.path().join("vendor.com-gpu.json"),
        format!(
            r#"{{"cdiVersion":"1.0.0","kind":"vendor.com/gpu",
              "containerEdits":{{"hooks":[{}]}},
              "devices":[
                {{"name":"gpu0","containerEdits":{{"deviceNodes":[{{"path":"/dev/vendor-gpu0","hostPath":"/dev/null"}}]}}}},
                {{"name":"broken","containerEdits":{{"hooks":[{{"hookName":"createContainer","path":"/bin/sh","args":["sh","-c","echo no such GPU >&2; exit 7"]}}]}}}},
                {{"name":"norun","containerEdits":{{"hooks":[{{"hookName":"createRuntime","path":"/bin/sh","args":["sh","-c","exit 3"]}}]}}}}
              ]}}"#,
            hooks.join(",")
        ),
    )
    .unwrap();
    let Some(mut env) = BusyboxEnv::start_with(DaemonOptions {
        extra_config: format!(
            "\n[cdi]\nspec_dirs = [{:?}]\n",
            specs.path().display().to_string()
        ),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let p = env.c.run_pod(env.pod_config("cdi", "hooks")).await;
    let mut c = env.container_config("gpu", &["sleep", "1000"]);
    c.cdi_devices = vec![cri::CdiDevice {
        name: "vendor.com/gpu=gpu0".into(),
    }];
    c.annotations = HashMap::from([("team".to_string(), "ml".to_string())]);
    let id = env.c.run_container(&p, c).await;
    let read = |name: &str| -> serde_json::Value {
        let path = o.join(name);
        serde_json::from_str(
            &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap()
    };
    let info = env.c.verbose_info(&id).await;
    let pid = info["pid"].as_u64().unwrap();
    // createRuntime: the runtime's view, the container's pid, its own environment only.
    let state = read("create-runtime.json");
    assert_eq!(state["id"], id.as_str());
    assert_eq!(state["status"], "creating");
    assert_eq!(state["pid"].as_u64(), Some(pid));
    assert_eq!(state["annotations"]["team"], "ml");
    assert_eq!(
        std::fs::read_to_string(o.join("create-runtime.env")).unwrap(),
        "from-create-runtime\n"
    );
    // The bundle holds the OCI config.json the hooks read; crictl inspect shows the same.
    let bundle = std::path::PathBuf::from(state["bundle"].as_str().unwrap());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap())
            .unwrap();
    assert!(
        config["root"]["path"]
            .as_str()
            .unwrap()
            .ends_with("/rootfs")
    );
    assert_eq!(config["hooks"]["poststop"][0]["path"], "/bin/sh");
    assert_eq!(info["runtimeSpec"]["root"], config["root"]);
    assert_eq!(read("create-container.json")["status"], "creating");
    assert_eq!(read("poststart.json")["status"], "running");
    assert_eq!(read("poststart.json")["pid"].as_u64(), Some(pid));
    // createContainer changed the root; startContainer ran inside it.
    let inside = env
        .c
        .exec(&id, &["cat", "/hooked", "/start-state.json"], 10)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&inside.stdout);
    assert_eq!(inside.exit_code, 0, "{text}");
    let (first, start_state) = text.split_once('\n').unwrap();
    assert_eq!(first, "created-by-hook");
    let start_state: serde_json::Value = serde_json::from_str(start_state).unwrap();
    assert_eq!(start_state["status"], "created");
    assert!(!o.join("poststop.json").exists());
    // RemoveContainer stops it first.
    env.c
        .runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    let stopped = read("poststop.json");
    assert_eq!(stopped["status"], "stopped");
    assert!(stopped.get("pid").is_none(), "{stopped}");
    assert!(!bundle.exists());

    // A failing createContainer or createRuntime hook fails the start, naming the hook
    // and quoting it; nothing of the container keeps running.
    for (device, needle) in [
        (
            "broken",
            "createContainer hook /bin/sh: exit status 7: no such GPU",
        ),
        ("norun", "createRuntime hook /bin/sh: exit status 3"),
    ] {
        let mut c = env.container_config(device, &["sleep", "1000"]);
        c.cdi_devices = vec![cri::CdiDevice {
            name: format!("vendor.com/gpu={device}"),
        }];
        let id = env.c.create(&p, c).await.unwrap();
        let e = env.c.start(&id).await.unwrap_err();
        assert!(e.message().contains(needle), "{needle}: {e:?}");
        let st = env.c.status(&id).await;
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(st.reason, "StartError");
        let listed = env.c.containers().await;
        assert!(
            listed
                .iter()
                .all(|c| c.state != cri::ContainerState::ContainerRunning as i32),
            "{listed:?}"
        );
    }
    env.c.stop_and_remove_pod(&p).await;
}

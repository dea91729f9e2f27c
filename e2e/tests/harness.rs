//! The harness itself: test images push to a real registry and come back byte for byte;
//! the auth registry refuses anonymous and wrong credentials.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_e2e::Registry;
use berth_e2e::images::{Compression, Format, catalog, sha256_digest};

#[test]
fn catalog_images_push_and_pull_back_verified() {
    if !catalog::available() {
        return;
    }
    let Some(reg) = Registry::start() else { return };
    let images = [
        ("busybox", catalog::busybox()),
        ("busybox-user-name", catalog::user_by_name()),
        ("busybox-user-uid", catalog::user_by_uid()),
        ("busybox-config", catalog::with_config()),
        ("whiteout", catalog::whiteouts()),
        ("busybox-gzip", catalog::compressed(Compression::Gzip)),
        ("busybox-zstd", catalog::compressed(Compression::Zstd)),
        ("busybox-plain", catalog::compressed(Compression::None)),
        (
            "busybox-docker",
            catalog::busybox().with_format(Format::Docker),
        ),
    ];
    for (name, img) in images {
        let built = img.build();
        let digest = reg.push_image(name, "latest", &built);
        assert_eq!(digest, built.manifest_digest);
        let r = reg
            .get_with(
                &format!("/v2/{name}/manifests/latest"),
                None,
                &[("Accept", built.manifest_media_type)],
            )
            .unwrap();
        assert_eq!(
            r.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(sha256_digest(&r.body), built.manifest_digest, "{name}");
        assert_eq!(
            r.header("Docker-Content-Digest"),
            Some(built.manifest_digest.as_str())
        );
        for (d, bytes) in &built.blobs {
            let b = reg.get(&format!("/v2/{name}/blobs/{d}")).unwrap();
            assert_eq!(b.status, 200);
            assert_eq!(&b.body, bytes, "{name} blob {d}");
        }
    }
    for format in [Format::Oci, Format::Docker] {
        let idx = catalog::multiarch(format);
        reg.push_index("multiarch", "latest", &idx);
        let r = reg
            .get_with(
                "/v2/multiarch/manifests/latest",
                None,
                &[("Accept", idx.media_type)],
            )
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(sha256_digest(&r.body), idx.digest);
    }
}

#[test]
fn the_auth_registry_needs_credentials() {
    if !catalog::available() {
        return;
    }
    let Some(reg) = Registry::start_with_auth("berth", "s3cret") else {
        return;
    };
    let built = catalog::busybox().build();
    reg.push_image("private/busybox", "v1", &built);
    let anon = reg
        .get_with("/v2/private/busybox/manifests/v1", None, &[])
        .unwrap();
    assert_eq!(anon.status, 401);
    assert!(
        anon.header("WWW-Authenticate")
            .unwrap_or_default()
            .starts_with("Basic")
    );
    let wrong = reg
        .get_with(
            "/v2/private/busybox/manifests/v1",
            Some("Basic YmVydGg6d3Jvbmc=".into()),
            &[],
        )
        .unwrap();
    assert_eq!(wrong.status, 401);
    let accept = [("Accept", built.manifest_media_type)];
    let ok = reg
        .get_with(
            "/v2/private/busybox/manifests/v1",
            Some("Basic YmVydGg6czNjcmV0".into()),
            &accept,
        )
        .unwrap();
    assert_eq!(ok.status, 200);
}

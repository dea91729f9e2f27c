//! Image archives, for nodes that cannot reach a registry: import an OCI image layout or a
//! `docker save` archive (tar, or tar.gz), export an OCI image layout that skopeo,
//! containerd and `docker load` read.
//!
//! Import is a pull whose registry is a tar stream, with a pull's defences: every blob
//! goes through the content store's ingest (hashed as it streams in, size-checked against
//! the tar header, refused on a digest mismatch), manifests and configs are read with a
//! pull's size limits, layers are unpacked by the same code with the same limits and
//! checked against the config's diff_ids, and the image is recorded only when all of it
//! checks out. Nothing is ever written at a path the archive names: entries are only
//! recognised by shape (`blobs/sha256/<hex>`, `index.json`, `manifest.json`, `<id>.json`,
//! `<id>/layer.tar`, `<hex>.tar`); everything else in the archive is skipped. A lease keeps what the
//! import has stored from the garbage collector until the image record holds it.
//!
//! Where an archive names images: `io.containerd.image.name` (containerd's export), else
//! `org.opencontainers.image.ref.name` when it is a full reference (skopeo writes what it
//! was given), else `RepoTags` (docker); `--tag` names an image the archive leaves unnamed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};

use serde::Deserialize;

use super::lease::Lease;
use super::manifest::{self, Document, MAX_CONFIG, MAX_MANIFEST};
use super::pull::{image_record, layer_records};
use super::reference::ImageRef;
use crate::Engine;
use crate::content::{ContentError, ContentStore};
use crate::error::{Error, Result};
use crate::id::Digest;
use crate::state::records::ImageRecord;

/// Entries an archive may have (an image of 128 layers has a few hundred).
const MAX_ENTRIES: u64 = 100_000;
/// The annotation containerd's export names an image with.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for an image's name (a tag, or a whole reference).
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What an import brought in.
#[derive(Debug, Clone)]
pub struct Imported {
    pub record: ImageRecord,
    /// The names the archive gave it (normalised), empty when it gave none.
    pub names: Vec<String>,
}

/// The archive's parts that tell what its images are; the blobs are in the content store.
#[derive(Debug, Default)]
struct Staged {
    /// Every blob stored, by its path in the archive.
    blobs: HashMap<String, Digest>,
    /// Symlinks and hard links (docker save links identical layers), path -> target.
    links: HashMap<String, String>,
    index_json: Option<Vec<u8>>,
    manifest_json: Option<Vec<u8>>,
}

impl Staged {
    fn blob(&self, path: &str) -> Option<&Digest> {
        let mut p = normalise(path)?;
        for _ in 0..8 {
            if let Some(d) = self.blobs.get(&p) {
                return Some(d);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(format!("image archive: {}", msg.into()))
}

/// A path inside the archive as berth compares them: no `.` or `..` left, not absolute;
/// None for one that climbs out of the archive.
fn normalise(p: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty() && !p.starts_with('/')).then(|| parts.join("/"))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads the archive into the content store (blocking). A gzip-compressed archive is
/// recognised by its magic number. No blob may exceed `max_blob` (a pull's limit on a
/// layer's uncompressed bytes).
fn stage(
    content: &ContentStore,
    lease: &Lease,
    reader: impl Read,
    max_blob: u64,
) -> Result<Staged> {
    let mut buffered = BufReader::with_capacity(1 << 16, reader);
    let magic = buffered.fill_buf().map_err(|e| bad(format!("read: {e}")))?;
    let gz = magic.starts_with(&[0x1f, 0x8b]);
    let input: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut tar = tar::Archive::new(input);
    let mut staged = Staged::default();
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for (n, entry) in entries.enumerate() {
        if n as u64 >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| bad(format!("entry {n}: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(format!("entry {n}: {e}")))?
            .to_string_lossy()
            .into_owned();
        let Some(path) = normalise(&raw) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            let resolved = if kind.is_symlink() && !target.starts_with('/') {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                format!("{dir}/{target}")
            } else {
                target
            };
            if let Some(t) = normalise(&resolved) {
                staged.links.insert(path, t);
            }
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| bad(format!("{path}: {e}")))?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["blobs", "sha256", hex] if is_hex64(hex) => {
                if size > max_blob {
                    return Err(bad(format!("{path} is {size} bytes, more than {max_blob}")));
                }
                let d: Digest = format!("sha256:{hex}")
                    .parse()
                    .map_err(|_| bad(format!("{path}: not a digest")))?;
                lease.add(d.to_string());
                if !content.exists(&d) {
                    let mut w = content
                        .writer(&d, Some(size), size)
                        .map_err(|e| blob_error(&path, e))?;
                    copy_into(&mut entry, &mut w, &path)?;
                    w.commit().map_err(|e| blob_error(&path, e))?;
                }
                staged.blobs.insert(path, d);
            }
            ["index.json"] | ["manifest.json"] => {
                if size > MAX_MANIFEST {
                    return Err(bad(format!(
                        "{path} is {size} bytes, more than {MAX_MANIFEST}"
                    )));
                }
                let mut b = Vec::with_capacity(size as usize);
                entry
                    .read_to_end(&mut b)
                    .map_err(|e| bad(format!("{path}: {e}")))?;
                if path == "index.json" {
                    staged.index_json = Some(b);
                } else {
                    staged.manifest_json = Some(b);
                }
            }
            // docker-archive layouts: the config as <id>.json; layers as <id>/layer.tar
            // (docker save) or <hex>.tar (skopeo). Their digests come from their content.
            [name] if name.ends_with(".json") && *name != "repositories" => {
                let (d, _) = content
                    .put_reader(&mut entry, MAX_CONFIG, |d| lease.add(d.to_string()))
                    .map_err(|e| blob_error(&path, e))?;
                staged.blobs.insert(path, d);
            }
            [name] | [_, name] if name.ends_with(".tar") => {
                let (d, _) = content
                    .put_reader(&mut entry, max_blob, |d| lease.add(d.to_string()))
                    .map_err(|e| blob_error(&path, e))?;
                staged.blobs.insert(path, d);
            }
            _ => {}
        }
    }
    Ok(staged)
}

fn blob_error(path: &str, e: ContentError) -> Error {
    match e {
        ContentError::Io(e) => Error::Io(e),
        other => bad(format!("{path}: {other}")),
    }
}

fn copy_into(r: &mut impl Read, w: &mut crate::content::Ingest<'_>, path: &str) -> Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).map_err(|e| bad(format!("{path}: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        w.write_chunk(&buf[..n]).map_err(|e| blob_error(path, e))?;
    }
}

/// `index.json` of an OCI image layout.
#[derive(Debug, Deserialize)]
struct LayoutIndex {
    #[serde(default)]
    manifests: Vec<LayoutEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutEntry {
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// One image of a `docker save` manifest.json.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// An image the archive describes, its blobs in the content store.
struct Found {
    names: Vec<ImageRef>,
    index_digest: Option<Digest>,
    manifest_digest: Digest,
    manifest_bytes: Vec<u8>,
}

/// The names of an index.json entry; `fallback` names an image the archive leaves unnamed.
fn layout_names(e: &LayoutEntry, fallback: Option<&ImageRef>) -> Result<Vec<ImageRef>> {
    if let Some(n) = e.annotations.get(CONTAINERD_NAME) {
        return Ok(vec![n.parse()?]);
    }
    match e.annotations.get(OCI_REF_NAME) {
        // A whole reference (skopeo's oci-archive:FILE:busybox:1.36).
        Some(n) if n.contains('/') || n.contains(':') => Ok(vec![n.parse()?]),
        // Just a tag: the repository comes from --tag.
        Some(tag) => Ok(fallback
            .map(|f| ImageRef {
                tag: Some(tag.clone()),
                digest: None,
                ..f.clone()
            })
            .into_iter()
            .collect()),
        None => Ok(fallback.cloned().into_iter().collect()),
    }
}

impl Engine {
    /// Imports every image of an archive (blocking reader, read on the blocking pool);
    /// `tag` names an image the archive leaves unnamed (or, for a single image, adds a
    /// name). Returns what was imported.
    pub async fn import_images(
        &self,
        reader: impl Read + Send + 'static,
        tag: Option<&str>,
    ) -> Result<Vec<Imported>> {
        let tag: Option<ImageRef> = tag.filter(|t| !t.is_empty()).map(str::parse).transpose()?;
        let lease = std::sync::Arc::new(self.puller.leases.acquire());
        let imported = self.import_leased(reader, tag, &lease).await;
        drop(lease);
        if let Err(e) = &imported {
            // Leave nothing of a refused archive: what it stored is unreferenced now.
            tracing::warn!(error = %e, "image import refused");
            if let Err(gc) = self.collect_garbage() {
                tracing::warn!(error = %gc, "collect what a refused import stored");
            }
        }
        imported
    }

    async fn import_leased(
        &self,
        reader: impl Read + Send + 'static,
        tag: Option<ImageRef>,
        lease: &std::sync::Arc<Lease>,
    ) -> Result<Vec<Imported>> {
        let started = std::time::Instant::now();
        let staged = {
            let content = self.content.clone();
            let lease = lease.clone();
            let max_blob = self.puller.limits.max_bytes;
            tokio::task::spawn_blocking(move || stage(&content, &lease, reader, max_blob))
                .await
                .map_err(|e| Error::Internal(format!("import task: {e}")))??
        };
        let found = if let Some(index) = &staged.index_json {
            self.found_in_layout(index, tag.as_ref())?
        } else if let Some(m) = &staged.manifest_json {
            self.found_in_docker(m, &staged, lease, tag.as_ref())?
        } else {
            return Err(bad(
                "neither index.json nor manifest.json: not an OCI image layout or a docker save archive",
            ));
        };
        if found.is_empty() {
            return Err(bad("it holds no image"));
        }
        let single = found.len() == 1;
        let mut out = Vec::new();
        for mut f in found {
            if single
                && let Some(t) = &tag
                && !f.names.contains(t)
            {
                f.names.push(t.clone());
            }
            out.push(self.record_found(f, lease).await?);
        }
        tracing::info!(
            images = ?out.iter().map(|i| i.record.id.to_string()).collect::<Vec<_>>(),
            seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
            "images imported"
        );
        Ok(out)
    }

    fn found_in_layout(&self, index: &[u8], tag: Option<&ImageRef>) -> Result<Vec<Found>> {
        let index: LayoutIndex =
            serde_json::from_slice(index).map_err(|e| bad(format!("index.json: {e}")))?;
        let mut out = Vec::new();
        for e in &index.manifests {
            let digest: Digest = e
                .digest
                .parse()
                .map_err(|_| bad(format!("index.json: {:?} is not a digest", e.digest)))?;
            let bytes = self.archive_blob(&digest, e.size, MAX_MANIFEST, "manifest")?;
            let names = layout_names(e, tag)?;
            match manifest::parse_document(&bytes, None).map_err(|e| bad(e.to_string()))? {
                Document::Manifest(_) => out.push(Found {
                    names,
                    index_digest: None,
                    manifest_digest: digest,
                    manifest_bytes: bytes,
                }),
                Document::Index(idx) => {
                    let desc = manifest::select_platform(&idx, &self.puller.platform)
                        .map_err(|e| bad(format!("index {digest}: {e}")))?;
                    let m = self.archive_blob(
                        &desc.digest,
                        desc.size,
                        MAX_MANIFEST,
                        "platform manifest",
                    )?;
                    out.push(Found {
                        names,
                        index_digest: Some(digest),
                        manifest_digest: desc.digest,
                        manifest_bytes: m,
                    });
                }
            }
        }
        Ok(out)
    }

    /// `docker save` archives have no manifest in the registry's sense: berth writes the
    /// OCI manifest the image would have (uncompressed layers), as containerd's import does.
    fn found_in_docker(
        &self,
        manifest_json: &[u8],
        staged: &Staged,
        lease: &Lease,
        tag: Option<&ImageRef>,
    ) -> Result<Vec<Found>> {
        let entries: Vec<DockerEntry> = serde_json::from_slice(manifest_json)
            .map_err(|e| bad(format!("manifest.json: {e}")))?;
        let mut out = Vec::new();
        for e in entries {
            let blob = |p: &str, what: &str| {
                staged.blob(p).cloned().ok_or_else(|| {
                    bad(format!(
                        "manifest.json names {what} {p:?}, which the archive lacks"
                    ))
                })
            };
            let config = blob(&e.config, "the config")?;
            let config_bytes = self.content.read(&config, MAX_CONFIG)?;
            let parsed = manifest::parse_config(&config_bytes, e.layers.len())
                .map_err(|err| bad(format!("config {}: {err}", e.config)))?;
            let mut layers = Vec::new();
            for (i, p) in e.layers.iter().enumerate() {
                let d = blob(p, "layer")?;
                let size = self
                    .content
                    .size(&d)
                    .ok_or_else(|| bad(format!("layer {p} went missing")))?;
                // docker save layers are plain tars whose digest is the diff_id; other tools
                // may have compressed them.
                let media_type = if d == parsed.diff_ids[i] {
                    OCI_LAYER
                } else if self.blob_is_gzip(&d)? {
                    OCI_LAYER_GZIP
                } else {
                    return Err(bad(format!(
                        "layer {p}: its content hashes to {d}, the config says {}",
                        parsed.diff_ids[i]
                    )));
                };
                layers.push(serde_json::json!({
                    "mediaType": media_type, "digest": d.to_string(), "size": size,
                }));
            }
            let m = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": manifest::OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": config.to_string(),
                    "size": config_bytes.len(),
                },
                "layers": layers,
            });
            let bytes = serde_json::to_vec(&m).map_err(|e| Error::Internal(e.to_string()))?;
            let digest = Digest::of(&bytes);
            lease.add(digest.to_string());
            self.content.put(&digest, &bytes)?;
            let names = match e.repo_tags.unwrap_or_default() {
                t if t.is_empty() => tag.cloned().into_iter().collect(),
                t => t
                    .iter()
                    .map(|n| n.parse())
                    .collect::<std::result::Result<_, _>>()?,
            };
            out.push(Found {
                names,
                index_digest: None,
                manifest_digest: digest,
                manifest_bytes: bytes,
            });
        }
        Ok(out)
    }

    fn blob_is_gzip(&self, d: &Digest) -> Result<bool> {
        let mut f = self.content.open_blob(d)?;
        let mut magic = [0u8; 2];
        Ok(f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b])
    }

    /// A manifest- or config-sized blob of the archive (in the content store since it was
    /// staged), its size as its descriptor says.
    fn archive_blob(&self, d: &Digest, size: u64, limit: u64, what: &str) -> Result<Vec<u8>> {
        if size > limit {
            return Err(bad(format!(
                "{what} {d} is {size} bytes, more than {limit}"
            )));
        }
        if !self.content.exists(d) {
            return Err(bad(format!("the archive lacks {what} {d}")));
        }
        let bytes = self.content.read(d, limit)?;
        if bytes.len() as u64 != size {
            return Err(bad(format!(
                "{what} {d} is {} bytes, its descriptor says {size}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Checks an image's config and layers, unpacks its layers and records it.
    async fn record_found(&self, f: Found, lease: &Lease) -> Result<Imported> {
        let m = match manifest::parse_document(&f.manifest_bytes, None)
            .map_err(|e| bad(e.to_string()))?
        {
            Document::Manifest(m) => m,
            Document::Index(_) => return Err(bad("an index entry points at another index")),
        };
        let config_bytes =
            self.archive_blob(&m.config.digest, m.config.size, MAX_CONFIG, "config")?;
        let config = manifest::parse_config(&config_bytes, m.layers.len())
            .map_err(|e| bad(format!("config {}: {e}", m.config.digest)))?;
        for l in &m.layers {
            match self.content.size(&l.blob.digest) {
                Some(s) if s == l.blob.size => {}
                Some(s) => {
                    return Err(bad(format!(
                        "layer {} is {s} bytes, the manifest says {}",
                        l.blob.digest, l.blob.size
                    )));
                }
                None => return Err(bad(format!("the archive lacks layer {}", l.blob.digest))),
            }
        }
        let layers = layer_records(&m, &config.diff_ids);
        for l in &layers {
            lease.add(l.chain_id.to_string());
        }
        for (i, l) in layers.iter().enumerate() {
            let parent = i.checked_sub(1).map(|p| layers[p].chain_id.clone());
            self.puller
                .ensure_local_layer(l, parent)
                .await
                .map_err(|source| Error::Pull {
                    image: format!("(archive) {}", f.manifest_digest),
                    source,
                })?;
        }
        let tags: Vec<String> = f.names.iter().filter_map(ImageRef::tagged).collect();
        let digests: Vec<String> = f
            .names
            .iter()
            .map(|n| n.with_digest(f.index_digest.as_ref().unwrap_or(&f.manifest_digest)))
            .collect();
        let rec = image_record(
            tags,
            digests,
            f.index_digest,
            (f.manifest_digest, &m, f.manifest_bytes.len() as u64),
            layers,
            &config,
        );
        let db = self.db.clone();
        let record = tokio::task::spawn_blocking(move || db.image_put(rec))
            .await
            .map_err(|e| Error::Internal(format!("record task: {e}")))??;
        Ok(Imported {
            record,
            names: f.names.iter().map(ToString::to_string).collect(),
        })
    }

    /// Writes images as one OCI image layout tar (with a docker-compatible manifest.json,
    /// as containerd's export does) to `out`; blocking, call it on the blocking pool.
    pub fn export_images(&self, refs: &[String], out: impl Write) -> Result<()> {
        if refs.is_empty() {
            return Err(Error::InvalidArgument(
                "export: name at least one image".into(),
            ));
        }
        let mut images = Vec::new();
        for r in refs {
            let rec = self
                .resolve_image(r)?
                .ok_or_else(|| Error::ImageNotFound(r.clone()))?;
            images.push((r.clone(), rec));
        }
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        let mut written = std::collections::BTreeSet::new();
        let mut index = Vec::new();
        let mut docker = Vec::new();
        for (asked, rec) in &images {
            let name: Option<ImageRef> = rec
                .repo_tags
                .iter()
                .find(|t| t.as_str() == asked.as_str() || t.ends_with(&format!("/{asked}")))
                .or(rec.repo_tags.first())
                .and_then(|t| t.parse().ok());
            let blobs = std::iter::once((&rec.manifest_digest, rec.manifest_size))
                .chain(std::iter::once((&rec.id, rec.config_size)))
                .chain(rec.layers.iter().map(|l| (&l.digest, l.size)));
            for (d, size) in blobs {
                if written.insert(d.clone()) {
                    let f = self.content.open_blob(d)?;
                    append(&mut tar, &format!("blobs/sha256/{}", d.hex()), size, f)?;
                }
            }
            let mut annotations = serde_json::Map::new();
            if let Some(n) = &name {
                annotations.insert(CONTAINERD_NAME.into(), n.to_string().into());
                if let Some(t) = &n.tag {
                    annotations.insert(OCI_REF_NAME.into(), t.clone().into());
                }
            }
            let mut platform = serde_json::json!({"os": rec.os, "architecture": rec.architecture});
            if let Some(v) = &rec.variant {
                platform["variant"] = v.clone().into();
            }
            index.push(serde_json::json!({
                "mediaType": rec.manifest_media_type,
                "digest": rec.manifest_digest.to_string(),
                "size": rec.manifest_size,
                "annotations": annotations,
                "platform": platform,
            }));
            docker.push(serde_json::json!({
                "Config": format!("blobs/sha256/{}", rec.id.hex()),
                "RepoTags": name.as_ref().and_then(ImageRef::tagged).map(|t| docker_name(&t)).into_iter().collect::<Vec<_>>(),
                "Layers": rec.layers.iter().map(|l| format!("blobs/sha256/{}", l.digest.hex())).collect::<Vec<_>>(),
            }));
        }
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        append(&mut tar, "oci-layout", layout.len() as u64, &layout[..])?;
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_INDEX,
            "manifests": index,
        }))
        .map_err(|e| Error::Internal(e.to_string()))?;
        append(&mut tar, "index.json", index.len() as u64, index.as_slice())?;
        let docker = serde_json::to_vec(&docker).map_err(|e| Error::Internal(e.to_string()))?;
        append(
            &mut tar,
            "manifest.json",
            docker.len() as u64,
            docker.as_slice(),
        )?;
        let mut out = tar
            .into_inner()
            .map_err(|e| Error::Internal(format!("export: finish the archive: {e}")))?;
        out.flush()
            .map_err(|e| Error::Internal(format!("export: {e}")))?;
        Ok(())
    }
}

/// How docker names an image in manifest.json (`busybox:1.36`, `registry:5000/x:y`).
fn docker_name(full: &str) -> String {
    full.strip_prefix("docker.io/library/")
        .or_else(|| full.strip_prefix("docker.io/"))
        .unwrap_or(full)
        .to_owned()
}

fn append(
    tar: &mut tar::Builder<impl Write>,
    path: &str,
    size: u64,
    data: impl Read,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(0);
    tar.append_data(&mut h, path, data)
        .map_err(|e| Error::Internal(format!("export: write {path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_are_compared_normalised_and_never_escape() {
        assert_eq!(
            normalise("./blobs/sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalise("a//b/").as_deref(), Some("a/b"));
        assert_eq!(normalise("../etc/passwd"), None);
        assert_eq!(normalise("a/../../b"), None);
        assert_eq!(normalise("ef41/../8a02.tar").as_deref(), Some("8a02.tar"));
        assert_eq!(normalise("/abs"), None);
        assert_eq!(normalise("."), None);
    }

    #[test]
    fn skopeo_docker_archives_stage_their_layers_and_configs() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path()).unwrap();
        let leases = std::sync::Arc::new(super::super::lease::Leases::default());
        let lease = leases.acquire();
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o444);
            b.append_data(&mut h, path, data).unwrap();
        };
        add("8a02.tar", b"layer bytes");
        add("bb9e.json", b"{}");
        add("manifest.json", b"[]");
        add("ef41/VERSION", b"1.0");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "ef41/layer.tar", "../8a02.tar")
            .unwrap();
        let bytes = b.into_inner().unwrap();
        let staged = stage(&content, &lease, bytes.as_slice(), 1 << 20).unwrap();
        // A blob over the limit is refused.
        let big = {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(64);
            b.append_data(&mut h, "big.tar", &[0u8; 64][..]).unwrap();
            b.into_inner().unwrap()
        };
        let e = stage(&content, &lease, big.as_slice(), 32).unwrap_err();
        assert!(e.to_string().contains("more than 32"), "{e}");
        let layer = staged.blob("8a02.tar").expect("layer staged");
        assert_eq!(staged.blob("ef41/layer.tar"), Some(layer));
        assert_eq!(content.read(layer, 100).unwrap(), b"layer bytes");
        assert!(staged.blob("bb9e.json").is_some());
        assert!(staged.blob("ef41/VERSION").is_none());
        assert_eq!(staged.manifest_json.as_deref(), Some(&b"[]"[..]));
    }

    #[test]
    fn links_resolve_to_the_blob_they_name() {
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let mut s = Staged::default();
        s.blobs.insert("one/layer.tar".into(), d.clone());
        s.links
            .insert("two/layer.tar".into(), "one/layer.tar".into());
        s.links.insert("loop".into(), "loop".into());
        assert_eq!(s.blob("two/layer.tar"), Some(&d));
        assert_eq!(s.blob("./one/layer.tar"), Some(&d));
        assert_eq!(s.blob("loop"), None);
        assert_eq!(s.blob("three/layer.tar"), None);
    }

    #[test]
    fn names_come_from_the_annotations_then_the_tag() {
        let entry = |a: &[(&str, &str)]| LayoutEntry {
            digest: String::new(),
            size: 0,
            annotations: a
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let fallback: ImageRef = "registry.local/team/app:v1".parse().unwrap();
        let n = layout_names(
            &entry(&[
                (CONTAINERD_NAME, "docker.io/library/busybox:1.36"),
                (OCI_REF_NAME, "1.36"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(n[0].to_string(), "docker.io/library/busybox:1.36");
        let n = layout_names(&entry(&[(OCI_REF_NAME, "busybox:latest")]), None).unwrap();
        assert_eq!(n[0].to_string(), "docker.io/library/busybox:latest");
        let n = layout_names(&entry(&[(OCI_REF_NAME, "v2")]), Some(&fallback)).unwrap();
        assert_eq!(n[0].to_string(), "registry.local/team/app:v2");
        assert!(
            layout_names(&entry(&[(OCI_REF_NAME, "v2")]), None)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            docker_name("docker.io/library/busybox:1.36"),
            "busybox:1.36"
        );
        assert_eq!(docker_name("docker.io/me/x:1"), "me/x:1");
        assert_eq!(docker_name("127.0.0.1:5000/x:1"), "127.0.0.1:5000/x:1");
    }
}

//! `berthd image import|export`: a client of the running daemon's image service on its
//! socket, so that the daemon stays the only writer of its state.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use berth_proto::images::images_client::ImagesClient;
use berth_proto::images::{ExportRequest, ImportRequest};
use hyper_util::rt::TokioIo;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint, Uri};

/// Bytes per upload message.
const CHUNK: usize = 1 << 20;

async fn connect(socket: &Path) -> anyhow::Result<ImagesClient<Channel>> {
    let path: PathBuf = socket.to_owned();
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .with_context(|| {
            format!(
                "connect to berthd at {} (is it running? `--listen` names another socket)",
                socket.display()
            )
        })?;
    Ok(ImagesClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

/// Imports `file` (`-`: standard input); prints each image imported.
pub fn import(socket: &Path, file: &Path, tag: Option<String>) -> anyhow::Result<()> {
    let mut input: Box<dyn Read + Send> = if file == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?)
    };
    let started = std::time::Instant::now();
    let rt = runtime()?;
    rt.block_on(async move {
        let mut client = connect(socket).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<ImportRequest>(4);
        let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let mut tag = tag.unwrap_or_default();
            let mut total = 0u64;
            loop {
                let mut data = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = input
                        .read(&mut data[filled..])
                        .context("read the archive")?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                data.truncate(filled);
                total += filled as u64;
                let last = filled < CHUNK;
                let msg = ImportRequest {
                    data,
                    tag: std::mem::take(&mut tag),
                };
                if tx.blocking_send(msg).is_err() || last {
                    return Ok(total);
                }
            }
        });
        let answer = client
            .import(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        let total = reader.await.context("reader task")??;
        let answer = answer.map_err(|s| anyhow::anyhow!("import: {}", s.message()))?;
        for i in answer.into_inner().images {
            let names = if i.repo_tags.is_empty() {
                "(no name)".to_owned()
            } else {
                i.repo_tags.join(" ")
            };
            println!("imported {} {names} ({} bytes)", i.id, i.size);
        }
        eprintln!(
            "read {total} bytes in {:.2}s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

/// Exports `images` to `file` (`-`: standard output), written whole or not at all.
pub fn export(socket: &Path, images: Vec<String>, file: &Path) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async move {
        let mut client = connect(socket).await?;
        let mut stream = client
            .export(ExportRequest { images })
            .await
            .map_err(|s| anyhow::anyhow!("export: {}", s.message()))?
            .into_inner();
        let to_stdout = file == Path::new("-");
        let tmp = file.with_extension("berth-export.tmp");
        let mut out: Box<dyn Write> = if to_stdout {
            Box::new(std::io::stdout().lock())
        } else {
            if file.exists() {
                bail!("{} exists; remove it or name another file", file.display());
            }
            Box::new(std::io::BufWriter::new(
                std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?,
            ))
        };
        let written: anyhow::Result<u64> = async {
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|s| anyhow::anyhow!("export: {}", s.message()))?;
                out.write_all(&chunk.data).context("write the archive")?;
                n += chunk.data.len() as u64;
            }
            out.flush().context("write the archive")?;
            Ok(n)
        }
        .await;
        drop(out);
        match written {
            Ok(n) if !to_stdout => {
                std::fs::rename(&tmp, file)
                    .with_context(|| format!("rename to {}", file.display()))?;
                eprintln!("wrote {n} bytes to {}", file.display());
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    })
}

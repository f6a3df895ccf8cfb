//! The container of a torch.save file: the zip archive of PyTorch ≥ 1.6, and the storages in
//! it. The legacy format (before 1.6) is recognised only to be refused, with the command that
//! converts it to the zip format.
//!
//! Layout of such an archive (the folder is the file's stem: `checkpoint/`, `archive/`, …):
//! `<folder>/data.pkl` (the pickled object), `<folder>/data/<key>` (one entry of raw
//! little-endian bytes per storage, referenced from the pickle by persistent ids),
//! `<folder>/byteorder` and `<folder>/version`.

use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;

pub(super) const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// The pre-1.6 format opens with a pickled magic number, 0x1950a86a20f9469cfc6c, as a LONG1.
pub(super) fn is_legacy(head: &[u8]) -> bool {
    const MAGIC: [u8; 12] = [
        0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
    ];
    head.first() == Some(&0x80) && head.windows(MAGIC.len()).any(|w| w == MAGIC)
}

/// The zip archive, and the storages already read from it (each is read once, however many
/// tensors view it).
pub(super) struct Archive {
    zip: zip::ZipArchive<BufReader<File>>,
    /// The folder holding `data.pkl`, with its trailing `/`.
    root: String,
    /// Caps allocations, so that a corrupt size field cannot ask for terabytes.
    file_len: u64,
    storages: HashMap<String, Rc<Vec<u8>>>,
}

impl Archive {
    /// Opens a torch.save file as a zip archive. Errors name the file (the caller adds nothing):
    /// what is not a zip is told apart as a legacy file or no torch file at all.
    pub(super) fn open(path: &Path) -> Result<Archive> {
        let shown = path.display();
        let mut file = File::open(path).map_err(|e| anyhow!("{shown}: cannot open: {e}"))?;
        let len = file
            .metadata()
            .map_err(|e| anyhow!("{shown}: cannot read its size: {e}"))?
            .len();
        let mut head = Vec::with_capacity(64);
        (&mut file)
            .take(64)
            .read_to_end(&mut head)
            .map_err(|e| anyhow!("{shown}: cannot read: {e}"))?;
        if !head.starts_with(ZIP_MAGIC) {
            if is_legacy(&head) {
                let p = path.to_string_lossy();
                bail!(
                    "{p}: legacy torch.save format; re-save it with PyTorch ≥ 1.6: \
                     python -c \"import torch; torch.save(torch.load('{p}'), '{p}')\""
                );
            }
            bail!("{shown}: not a torch.save file");
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| anyhow!("{shown}: cannot read: {e}"))?;
        let zip = zip::ZipArchive::new(BufReader::new(file))
            .map_err(|e| anyhow!("{shown}: corrupt or truncated zip archive ({e})"))?;
        Ok(Archive {
            zip,
            root: String::new(),
            file_len: len,
            storages: HashMap::new(),
        })
    }

    /// Finds the archive folder, checks the byte order, and returns the pickle's bytes.
    /// Errors do not name the file: the caller adds it.
    pub(super) fn pickle(&mut self) -> Result<Vec<u8>> {
        // Like torch's own reader: the folder is that of the first entry.
        if self.zip.is_empty() {
            bail!("empty zip archive: not a torch.save file");
        }
        let first = self
            .zip
            .by_index_raw(0)
            .map(|f| f.name().to_owned())
            .map_err(|e| anyhow!("corrupt zip archive ({e})"))?;
        let folder = first.split('/').next().unwrap_or_default();
        self.root = format!("{folder}/");
        if !self.has(&self.entry("data.pkl")) {
            bail!("zip archive without a top-level */data.pkl: not a torch.save file");
        }
        let byteorder = self.entry("byteorder");
        if self.has(&byteorder) {
            let order = self.read(&byteorder)?;
            match order.as_slice() {
                b"little" => {}
                b"big" => bail!(
                    "written on a big-endian machine; only little-endian files are supported \
                     (re-save it on a little-endian one)"
                ),
                other => bail!(
                    "entry '{byteorder}' holds '{}', not 'little' or 'big'",
                    String::from_utf8_lossy(other)
                ),
            }
        }
        self.read(&self.entry("data.pkl"))
    }

    /// The raw bytes of storage `key` (the entry `data/<key>`), read on first use.
    pub(super) fn storage(&mut self, key: &str) -> Result<Rc<Vec<u8>>> {
        if let Some(bytes) = self.storages.get(key) {
            return Ok(bytes.clone());
        }
        let bytes = Rc::new(self.read(&self.entry(&format!("data/{key}")))?);
        self.storages.insert(key.to_owned(), bytes.clone());
        Ok(bytes)
    }

    /// The size storage `key` declares (its zip entry's uncompressed size), read from the
    /// archive's directory: nothing is inflated.
    pub(super) fn declared_size(&mut self, key: &str) -> Result<u64> {
        let name = self.entry(&format!("data/{key}"));
        match self.zip.by_name(&name) {
            Ok(f) => Ok(f.size()),
            Err(zip::result::ZipError::FileNotFound) => bail!("missing entry '{name}'"),
            Err(e) => bail!("entry '{name}': {e} (corrupt archive?)"),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.zip.file_names().any(|n| n == name)
    }

    fn entry(&self, name: &str) -> String {
        format!("{}{name}", self.root)
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        let mut f = match self.zip.by_name(name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => bail!("missing entry '{name}'"),
            Err(e) => bail!("entry '{name}': {e} (corrupt archive?)"),
        };
        let declared = f.size();
        let mut buf = Vec::with_capacity(declared.min(self.file_len) as usize);
        // Never more than the entry declares, whatever its compressed data inflates to.
        (&mut f)
            .take(declared.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| anyhow!("entry '{name}': {e} (truncated or corrupt archive?)"))?;
        if buf.len() as u64 != declared {
            let got = if buf.len() as u64 > declared {
                "more".to_string()
            } else {
                buf.len().to_string()
            };
            bail!("entry '{name}' inflates to {got} bytes, not the {declared} it declares (corrupt archive?)");
        }
        Ok(buf)
    }
}

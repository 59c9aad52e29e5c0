//! A stored token stream (little-endian u32) as a `&[u32]`, memory-mapped
//! so that training on a corpus larger than memory pages it in on demand.
use std::ops::Deref;

use crate::store::StoreError;

pub struct TokenStream {
    inner: Inner,
}

enum Inner {
    #[cfg(target_endian = "little")]
    Mapped(memmap2::Mmap),
    #[cfg_attr(target_endian = "little", allow(dead_code))]
    Owned(Vec<u32>),
}

impl TokenStream {
    /// Maps a token file. The store never rewrites a blob in place (puts
    /// rename a new file over it, deletes unlink it), so the mapped bytes
    /// cannot change or shrink underneath us.
    pub fn map(file: &std::fs::File) -> Result<Self, StoreError> {
        let len = file.metadata()?.len();
        if len % 4 != 0 {
            return Err(StoreError::Corrupt(format!(
                "a token stream has {len} bytes, not a multiple of 4"
            )));
        }
        if len == 0 {
            return Ok(Self::from_vec(Vec::new()));
        }
        // SAFETY: the file is only ever replaced by rename or unlinked, never
        // written or truncated in place (see `BlobStore`), so the mapping
        // stays valid and unchanged for its lifetime.
        let map = unsafe { memmap2::Mmap::map(file)? };
        #[cfg(target_endian = "little")]
        {
            // Page-aligned and a multiple of 4 long, so this cannot fail.
            bytemuck::try_cast_slice::<u8, u32>(&map)
                .map_err(|e| StoreError::Corrupt(format!("token stream: {e}")))?;
            Ok(Self {
                inner: Inner::Mapped(map),
            })
        }
        #[cfg(not(target_endian = "little"))]
        Ok(Self::from_vec(
            map.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }

    pub fn from_vec(tokens: Vec<u32>) -> Self {
        Self {
            inner: Inner::Owned(tokens),
        }
    }
}

impl Deref for TokenStream {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        match &self.inner {
            // Checked castable in `map`.
            #[cfg(target_endian = "little")]
            Inner::Mapped(map) => bytemuck::cast_slice(map),
            Inner::Owned(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_little_endian_ids_and_refuses_a_torn_file() {
        let mut f = tempfile::tempfile().unwrap();
        for id in [1u32, 70_000, 3] {
            f.write_all(&id.to_le_bytes()).unwrap();
        }
        assert_eq!(&*TokenStream::map(&f).unwrap(), &[1, 70_000, 3]);
        f.write_all(&[9]).unwrap();
        assert!(TokenStream::map(&f).is_err());
        let empty = tempfile::tempfile().unwrap();
        assert!(TokenStream::map(&empty).unwrap().is_empty());
    }
}

//! Read-only drive images (the root image, a toolchain layer) without copying them.
//!
//! A [`DriveImage`] is either bytes in memory or a verified file mapped read-only, shared by
//! every machine of a run. A machine gets the drive as a private copy-on-write mapping of
//! that file ([`DriveImage::base`] → [`PrivateMapping`], the machine's
//! [`cmbuild_machine::memory::HostMemory`]): the guest reads the file's pages from the page
//! cache, and a page it writes (it mounts these drives read-only, so none) would be copied
//! for that machine alone. Resuming a machine from the template then costs no copy of the
//! gigabytes of its drives.
//!
//! The file is checked against its content ID once, through the mapping, when it is opened
//! ([`DriveImage::map_verified`]); a file changed in place afterwards would change what the
//! guest reads, and so the build's state hash, which is computed over the mapped bytes.
//! An image also keeps its page tree as a drive ([`DriveImage::page_tree`]), so that the
//! templates a run resumes from hash each image once between them.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cmbuild_machine::memory::{HostMemory, PAGE_SIZE};
use cmbuild_machine::merkle::PageTree;
use cmbuild_machine::snapshot::Base;
use cmbuild_store::cid::{cid_of_bytes_parallel, Cid};

/// A drive image could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The file could not be opened or mapped.
    #[error("mapping {}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file's content ID is not the one asked for.
    #[error("{} has content ID {actual}, not {expected}", .path.display())]
    Cid {
        /// The file.
        path: PathBuf,
        /// The CID asked for.
        expected: Cid,
        /// The file's.
        actual: Cid,
    },
    /// The image is longer than the range it should fill.
    #[error("an image of {image} bytes does not fit a range of {range}")]
    TooLong {
        /// The image's length.
        image: u64,
        /// The range's.
        range: u64,
    },
}

/// A read-only drive image, cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct DriveImage(Arc<Image>);

#[derive(Debug)]
struct Image {
    data: Inner,
    /// Its page trees as a drive, by range length ([`DriveImage::page_tree`]).
    trees: Mutex<BTreeMap<u64, Arc<OnceLock<PageTree>>>>,
}

impl Image {
    fn new(data: Inner) -> Arc<Self> {
        Arc::new(Self {
            data,
            trees: Mutex::default(),
        })
    }
}

#[derive(Debug)]
enum Inner {
    Bytes(Vec<u8>),
    File(MappedFile),
}

impl DriveImage {
    /// Whether both are the same image (clones of one another), not merely equal bytes.
    pub fn same(&self, other: &DriveImage) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The page tree (of the state hash) of a drive of `range_length` bytes holding this
    /// image, then zeros ([`PageTree::build_in`]): hashed on first use and kept, so that
    /// the templates of a run, which map the same images, hash them once between them (a
    /// caller that asks while another builds it waits for that one). `None` if the image
    /// does not fit the range.
    pub fn page_tree(&self, range_length: u64) -> Option<PageTree> {
        if self.len() as u64 > range_length {
            return None;
        }
        let cell = {
            let mut trees = self.0.trees.lock().unwrap_or_else(|e| e.into_inner());
            trees.entry(range_length).or_default().clone()
        };
        Some(
            cell.get_or_init(|| PageTree::build_in(self, range_length))
                .clone(),
        )
    }
}

impl From<Vec<u8>> for DriveImage {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Image::new(Inner::Bytes(bytes)))
    }
}

impl Deref for DriveImage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0.data {
            Inner::Bytes(bytes) => bytes,
            Inner::File(file) => file.bytes(),
        }
    }
}

impl DriveImage {
    /// The file at `path` mapped read-only, if its content ID is `cid` (computed over the
    /// mapping, on every core: the bytes checked are the bytes machines read).
    pub fn map_verified(path: &Path, cid: &Cid) -> Result<Self, MapError> {
        let file = MappedFile::open(path)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let actual = cid_of_bytes_parallel(file.bytes(), threads);
        if actual != *cid {
            return Err(MapError::Cid {
                path: path.to_path_buf(),
                expected: *cid,
                actual,
            });
        }
        Ok(Self(Image::new(Inner::File(file))))
    }

    /// `bytes` (made in this process: a glibc floor's sysroots) in a file of memory of their
    /// own (`memfd_create`, never written again), mapped like an image file, so that every
    /// machine of the run gets them as a private copy-on-write mapping
    /// ([`DriveImage::private_memory`]) and reads the same host pages, instead of a copy
    /// each. `name` says what they are, in errors.
    pub fn in_memory_file(name: &str, bytes: &[u8]) -> Result<Self, MapError> {
        let label = PathBuf::from(format!("memfd:{name}"));
        let io = |source| MapError::Io {
            path: label.clone(),
            source,
        };
        let c_name = std::ffi::CString::new(name)
            .map_err(|_| io(std::io::Error::other("a name with a NUL byte")))?;
        // SAFETY: a new anonymous memory file with a NUL-terminated name; the result is
        // checked below and, when valid, owned by the `File` made from it.
        let fd = unsafe { libc::memfd_create(c_name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a valid descriptor just returned to us and owned by nothing else.
        let mut file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        std::io::Write::write_all(&mut file, bytes).map_err(io)?;
        let file = MappedFile::map(label, false, file)?;
        Ok(Self(Image::new(Inner::File(file))))
    }

    /// The file on disk the bytes are mapped from, if they are.
    pub fn path(&self) -> Option<&Path> {
        match &self.0.data {
            Inner::File(file) if file.on_disk => Some(&file.path),
            _ => None,
        }
    }

    /// The image as the base of a drive whose range has `range_length` bytes: a private
    /// copy-on-write mapping of the file (the range's tail past the image reads as zeros),
    /// or, for bytes in memory, a copy of them.
    pub fn base(&self, range_length: u64) -> Result<Base, MapError> {
        match &self.0.data {
            Inner::Bytes(bytes) => Ok(Base::Bytes(bytes.clone())),
            Inner::File(file) => Ok(Base::Memory {
                image_length: file.len as u64,
                memory: Box::new(file.private_range(range_length)?),
            }),
        }
    }

    /// A private copy-on-write mapping of the file over a range of `range_length` bytes
    /// (the file, then zeros), for a drive's memory; `None` for bytes in memory, which
    /// cannot be mapped.
    pub fn private_memory(
        &self,
        range_length: u64,
    ) -> Result<Option<Box<dyn HostMemory>>, MapError> {
        match &self.0.data {
            Inner::Bytes(_) => Ok(None),
            Inner::File(file) => Ok(Some(Box::new(file.private_range(range_length)?))),
        }
    }
}

/// A file mapped read-only and shared, with its descriptor kept for private mappings.
#[derive(Debug)]
struct MappedFile {
    /// Its path, or for a memory file what it holds (in errors).
    path: PathBuf,
    /// Whether `path` is a file on disk.
    on_disk: bool,
    file: File,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value (unmapped on drop); nothing
// writes through `ptr`.
unsafe impl Send for MappedFile {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    fn open(path: &Path) -> Result<Self, MapError> {
        let file = File::open(path).map_err(|source| MapError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::map(path.to_path_buf(), true, file)
    }

    /// `file`, open for reading, mapped whole.
    fn map(path: PathBuf, on_disk: bool, file: File) -> Result<Self, MapError> {
        let io = |source| MapError::Io {
            path: path.clone(),
            source,
        };
        let len = usize::try_from(file.metadata().map_err(io)?.len())
            .map_err(|_| io(std::io::Error::other("too large to map")))?;
        let ptr = if len == 0 {
            std::ptr::NonNull::<u8>::dangling().as_ptr()
        } else {
            // SAFETY: a new read-only shared mapping of `len` bytes of an open file at an
            // address the kernel picks; the result is checked below.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io(std::io::Error::last_os_error()));
            }
            ptr.cast::<u8>()
        };
        Ok(Self {
            path,
            on_disk,
            file,
            ptr,
            len,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes (or is dangling with `len` 0) until drop.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// A private, writable mapping of `range_length` bytes: the file, then zeros.
    fn private_range(&self, range_length: u64) -> Result<PrivateMapping, MapError> {
        let io = |source| MapError::Io {
            path: self.path.clone(),
            source,
        };
        if self.len as u64 > range_length || range_length % PAGE_SIZE != 0 {
            return Err(MapError::TooLong {
                image: self.len as u64,
                range: range_length,
            });
        }
        let length = usize::try_from(range_length)
            .map_err(|_| io(std::io::Error::other("too large to map")))?;
        if length == 0 {
            return Err(io(std::io::Error::other("an empty range")));
        }
        // SAFETY: a new anonymous private mapping at an address the kernel picks; checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io(std::io::Error::last_os_error()));
        }
        let mapping = PrivateMapping {
            ptr: ptr.cast(),
            len: length,
        };
        if self.len > 0 {
            let file_pages = self.len.next_multiple_of(PAGE_SIZE as usize);
            // SAFETY: replaces the first `file_pages` bytes of the anonymous mapping just
            // made (inside it: `file_pages <= length`, both whole pages) with a private
            // mapping of the file; bytes of its last page past the file's end read as
            // zeros, as the range's tail must.
            let at = unsafe {
                libc::mmap(
                    ptr,
                    file_pages,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    std::os::fd::AsRawFd::as_raw_fd(&self.file),
                    0,
                )
            };
            if at == libc::MAP_FAILED {
                return Err(io(std::io::Error::last_os_error()));
            }
        }
        Ok(mapping)
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping `open` made; no reference to its bytes
            // outlives `self`.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

/// A private copy-on-write mapping of a drive image over a whole range: a machine's drive.
#[derive(Debug)]
pub struct PrivateMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is private to this value, which owns it (unmapped on drop).
unsafe impl Send for PrivateMapping {}
// SAFETY: shared access only reads (the machine writes through `&mut`).
unsafe impl Sync for PrivateMapping {}

// SAFETY: `ptr` is one mapping of `len` readable, writable bytes (a whole number of pages),
// made private (MAP_PRIVATE: writes go to this process's copies, never to the file), alive
// until drop, and nothing but the range it is given to touches it.
unsafe impl HostMemory for PrivateMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn length(&self) -> usize {
        self.len
    }
}

impl Drop for PrivateMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `private_range` made (the file mapped over its
        // start is part of it).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmbuild_store::cid::cid_of_bytes;

    #[test]
    fn a_verified_mapping_reads_the_file_and_a_private_range_copies_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let bytes: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&path, &bytes).unwrap();
        let cid = cid_of_bytes(&bytes);
        let image = DriveImage::map_verified(&path, &cid).unwrap();
        assert_eq!(&image[..], &bytes[..]);
        assert_eq!(image.path(), Some(path.as_path()));
        let wrong = cid_of_bytes(b"other");
        assert!(matches!(
            DriveImage::map_verified(&path, &wrong),
            Err(MapError::Cid { .. })
        ));

        let Base::Memory {
            image_length,
            memory,
        } = image.base(8 * 4096).unwrap()
        else {
            panic!("a mapped image is a memory base");
        };
        assert_eq!(image_length, bytes.len() as u64);
        let mut range =
            cmbuild_machine::memory::MemRange::from_host_memory(0x1000_0000, memory).unwrap();
        assert_eq!(range.len(), 8 * 4096);
        assert_eq!(&range.bytes()[..bytes.len()], &bytes[..]);
        assert!(range.bytes()[bytes.len()..].iter().all(|&b| b == 0));
        // A write changes this range only: not the file, not the shared mapping, not another
        // range of the same image.
        assert!(range.write_bytes(5, b"written"));
        assert!(range.write_bytes(6 * 4096, b"tail"));
        assert_eq!(&range.bytes()[5..12], b"written");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(&image[..], &bytes[..]);
        let Base::Memory { memory, .. } = image.base(8 * 4096).unwrap() else {
            unreachable!()
        };
        assert_eq!(&memory_bytes(&*memory)[..bytes.len()], &bytes[..]);
        // The image is longer than the range, or the range is not whole pages: refused.
        assert!(matches!(
            image.base(2 * 4096),
            Err(MapError::TooLong { .. })
        ));
        assert!(image.base(8 * 4096 + 1).is_err());
        // Bytes in memory are copied.
        let owned = DriveImage::from(bytes.clone());
        assert!(owned.path().is_none());
        assert!(matches!(owned.base(8 * 4096).unwrap(), Base::Bytes(b) if b == bytes));
    }

    #[test]
    fn an_image_s_page_tree_is_its_range_s_and_is_shared_by_its_clones() {
        let bytes: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8 + 1).collect();
        let image = DriveImage::from(bytes.clone());
        let mut range = bytes.clone();
        range.resize(8 * 4096, 0);
        let tree = image.page_tree(8 * 4096).unwrap();
        assert_eq!(tree, PageTree::build(&range));
        assert_eq!(image.clone().page_tree(8 * 4096).unwrap(), tree);
        // Kept once per range length, for every clone.
        assert_eq!(image.0.trees.lock().unwrap().len(), 1);
        assert!(image.0.trees.lock().unwrap()[&(8 * 4096)].get().is_some());
        assert_eq!(
            image.page_tree(16 * 4096).unwrap().root(),
            PageTree::build_in(&bytes, 16 * 4096).root()
        );
        assert_ne!(image.page_tree(16 * 4096).unwrap().root(), tree.root());
        assert!(image.page_tree(2 * 4096).is_none());
    }

    fn memory_bytes(memory: &dyn HostMemory) -> &[u8] {
        // SAFETY: the memory's pointer is valid for its length while it lives (HostMemory's
        // contract), and this borrow does not outlive it.
        unsafe { std::slice::from_raw_parts(memory.as_ptr(), memory.length()) }
    }
}

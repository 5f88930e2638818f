//! Standard output written from the sink's own task where the kernel cannot make it wait:
//! a regular file (page cache), a socket (journald's stream under systemd) with
//! `MSG_DONTWAIT`, a pipe while `poll` says it has room. Whatever would block — a full pipe
//! or socket buffer, a terminal, a large write to a file — goes to tokio's blocking pool, as
//! every write did before (one thread hop and two wake-ups per batch).
//!
//! Writes go to a duplicate of descriptor 1, so nothing is buffered in std's `Stdout` and
//! its flag (blocking mode) is never changed for the other processes that share it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, send};
use nix::sys::stat::{SFlag, fstat};

/// Writes to a regular file up to this size go inline (page cache, microseconds).
const INLINE_FILE: usize = 64 * 1024;
/// Linux writes up to this many bytes to a pipe atomically; after `poll` reports room, such a
/// write finds a free slot and does not wait.
const PIPE_BUF: usize = 4096;

/// What descriptor 1 is, which decides how a write can avoid waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Socket,
    Pipe,
    /// A terminal or anything else: always the blocking pool.
    Other,
}

/// The process's standard output, written without a thread hop when that cannot block.
pub struct Stdout {
    file: Arc<File>,
    kind: Kind,
}

impl Stdout {
    /// Duplicates descriptor 1.
    pub fn open() -> io::Result<Self> {
        let fd: OwnedFd = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(Stdout::from_fd(fd))
    }

    /// Writes to `fd` (a test passes one end of a pipe or socket).
    pub fn from_fd(fd: OwnedFd) -> Self {
        let kind = match fstat(fd.as_fd()) {
            Ok(stat) => {
                let format = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
                if format == SFlag::S_IFREG {
                    Kind::File
                } else if format == SFlag::S_IFSOCK {
                    Kind::Socket
                } else if format == SFlag::S_IFIFO {
                    Kind::Pipe
                } else if format == SFlag::S_IFCHR && !is_terminal(&fd) {
                    // /dev/null and the like never wait.
                    Kind::File
                } else {
                    Kind::Other
                }
            }
            Err(_) => Kind::Other,
        };
        Stdout {
            file: Arc::new(File::from(fd)),
            kind,
        }
    }

    /// Writes all of `buf`: as much as cannot block inline, the rest on the blocking pool.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let done = self.write_inline(buf)?;
        if done == buf.len() {
            return Ok(());
        }
        let rest = buf[done..].to_vec();
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || (&*file).write_all(&rest))
            .await
            .map_err(|err| io::Error::other(format!("stdout task failed: {err}")))?
    }

    /// Writes what it can without waiting; returns how much.
    fn write_inline(&self, buf: &[u8]) -> io::Result<usize> {
        match self.kind {
            Kind::File if buf.len() <= INLINE_FILE => {
                (&*self.file).write_all(buf).map(|()| buf.len())
            }
            Kind::Socket => self.send_nowait(buf),
            Kind::Pipe => self.pipe_while_room(buf),
            Kind::File | Kind::Other => Ok(0),
        }
    }

    fn send_nowait(&self, buf: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match send(
                self.file.as_raw_fd(),
                &buf[done..],
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => done += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                // Not a socket after all (e.g. a socketpair end set up oddly): let the pool write.
                Err(Errno::ENOTSOCK) => break,
                Err(errno) => return Err(errno.into()),
            }
        }
        Ok(done)
    }

    fn pipe_while_room(&self, buf: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLOUT)];
            match poll(&mut fds, PollTimeout::ZERO) {
                Ok(0) => break,
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(errno.into()),
            }
            let ready = fds[0].revents().unwrap_or(PollFlags::empty());
            if !ready.contains(PollFlags::POLLOUT) {
                // POLLERR (reader gone) or POLLHUP: the blocking write reports it.
                break;
            }
            let end = (done + PIPE_BUF).min(buf.len());
            match (&*self.file).write(&buf[done..end]) {
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(done)
    }

    /// Nothing is buffered here; a regular file's data is in the page cache.
    pub fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn is_terminal(fd: &OwnedFd) -> bool {
    use std::io::IsTerminal;
    fd.as_fd().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn a_pipe_gets_everything_in_order_also_beyond_its_buffer() {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut out = Stdout::from_fd(OwnedFd::from(writer));
        assert_eq!(out.kind, Kind::Pipe);
        // 1 MiB: far beyond a pipe's 64 KiB, so part goes inline and part waits on the pool.
        let line: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        let expected = line.clone();
        let read = std::thread::spawn(move || {
            let mut reader = reader;
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        out.write_all(&line).await.unwrap();
        out.write_all(b"end\n").await.unwrap();
        drop(out);
        let got = read.join().unwrap();
        assert_eq!(got.len(), expected.len() + 4);
        assert!(got.starts_with(&expected) && got.ends_with(b"end\n"));
    }

    #[tokio::test]
    async fn a_socket_gets_everything_in_order_also_when_its_buffer_is_full() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut out = Stdout::from_fd(OwnedFd::from(a));
        assert_eq!(out.kind, Kind::Socket);
        let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = big.clone();
        let read = std::thread::spawn(move || {
            let mut b = b;
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        out.write_all(&big).await.unwrap();
        drop(out);
        assert_eq!(read.join().unwrap(), expected);
    }

    #[tokio::test]
    async fn a_file_is_written_inline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let mut out = Stdout::from_fd(OwnedFd::from(file));
        assert_eq!(out.kind, Kind::File);
        out.write_all(b"{\"seq\":1}\n").await.unwrap();
        out.write_all(&vec![b'x'; INLINE_FILE + 1]).await.unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            10 + INLINE_FILE as u64 + 1
        );
    }
}

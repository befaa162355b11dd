// How the mount behaves: the options the command line sets.
import CkptCache
import CkptS3
import Foundation

/// How the mount behaves. Defaults suit training jobs that read a bucket others change rarely.
public struct FSOptions: Sendable {
    /// How long attributes, directory listings and negative lookups are trusted.
    public var metadataTTL: Duration = .seconds(30)
    /// The bucket's objects never change (a published dataset): what is known of a file (its version, size,
    /// mtime) is trusted for the mount's life, so no HEAD or LIST revalidates it once known, and its cached
    /// blocks are read with no request. What is not known yet is still asked for: a name missing from a
    /// listing, and a directory's entries, are trusted for `metadataTTL` as always (new files appear), but a
    /// changed or deleted object is not noticed while this mount runs (reads of blocks not cached yet fail with
    /// EIO once the version they pinned is gone). The mount's own changes are seen as always.
    public var immutable = false
    /// When S3 cannot be reached (no response, timeouts, 5xx after the client's retries), what S3 confirmed of
    /// a file or directory within this long is used instead (logged): files already cached open and read during
    /// an outage. Zero: an outage fails lookups, stat and open with EIO.
    public var staleIfError: Duration = .seconds(3600)
    /// Most entries kept in complete directory listings (they answer lookups until the TTL passes), over all
    /// directories: a few hundred bytes each. A directory larger than this is listed for readers as always but
    /// its listing is not kept; lookups in it ask S3 name by name.
    public var maxListedEntries = 250_000
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0
    public var fileMode: UInt32 = 0o644
    public var dirMode: UInt32 = 0o755
    public var readOnly = false
    /// Size of one ranged GET when reading ahead.
    public var requestSize: Int64 = 16 << 20
    /// Largest read-ahead window of one open file.
    public var maxReadAhead: Int64 = 128 << 20
    /// Most ranged GETs in flight for read-ahead, over all files (demand reads are never held back).
    public var maxPrefetchRequests = 8
    /// A read-only open of a file at least this large whose first block is not cached yet asks for direct
    /// I/O (the adapter decides whether the kernel can do it): reads then bypass the kernel's page cache, so
    /// a cold stream's bytes are copied once, from the download straight into the reader's buffer, instead of
    /// into newly allocated page-cache pages and from there to the reader. Cached files keep the page cache.
    /// 0: every read-only open of a clean file; nil: never.
    public var directReadMinSize: Int64? = 32 << 20
    /// A file's mtime is the one its writer stored (x-amz-meta-mtime), else Last-Modified (true: a file known
    /// only from a listing is HEADed before the kernel sees it, see StoredMtimes.swift); or always
    /// Last-Modified (false: listings answer without HEADs, as mountpoint-s3 does). One rule either way.
    public var storedMtimes = true
    /// Bytes: a file a listing showed with at most this many bytes (and more than 0) is read whole with one
    /// GET where its stored mtime would take a HEAD (`storedMtimes`), and its data goes to the block cache, so
    /// list-then-read costs one request per file (S-CONS-LISTED-OPEN). Capped at the cache block size; 0: HEAD.
    /// 256 KiB: on S3 a GET is priced as a HEAD, and 256 KiB take about 2 ms at 1 Gbit/s, less than the
    /// first-byte latency of the HEAD they replace, while `ls -l` of a directory of large files costs no more.
    public var wholeGetMaxSize: Int64 = 256 << 10
    /// fsync() waits until the file is in S3 (true) or only until it is on local disk (false).
    public var durableFsync = true
    /// Smallest multipart part (a file up to this size is one PutObject).
    public var partSize: Int64 = 16 << 20
    /// Most bytes held in the staging area (files written and not yet uploaded, copies of files open while they
    /// upload) before writers are held back: a write past the bound waits (in the kernel's write, not failing)
    /// until uploads bring the staged bytes under it, as long as uploads are queued that can. Nil: half of what
    /// the cache disk had free at mount (plus what was already staged), at least 16 MiB.
    public var maxDirty: Int64?
    /// Files uploaded at once in parts (larger than `partSize`), and parts in flight over all files.
    public var uploadConcurrency = 4
    /// Files of at most `partSize` uploaded at once (one PutObject each, streamed from the staged file: no
    /// buffer each). Many small files (a DCP shard directory, a dataset written by a job) wait on the round
    /// trip, not the bandwidth: 4 at a time capped 1,000 × 64 KiB at 4 per RTT (bench/README, issue 19).
    public var smallUploadConcurrency = 32
    public var partConcurrency = 8
    /// A large new file written from the start goes up in parts while it is still being written (see
    /// EarlyUpload.swift); off (the default), every upload starts after close. On the 2-core bench machine,
    /// which also runs the server, it slowed the writer and did not make files durable sooner.
    public var uploadWhileWriting = false
    /// Parts of one file in flight while it is being written (few: the writer should not wait for them).
    public var partsWhileWriting = 2
    /// How long a closed file waits before its upload starts, unless fsync/flush waits for it: a rename in
    /// that time (write-temp-then-rename) is a local move.
    public var uploadDelay: Duration = .milliseconds(500)
    /// Uploads carry If-None-Match / If-Match so a change someone else made in S3 is never overwritten
    /// silently (a conflict keeps the local copy and is reported).
    public var conditionalWrites = true
    /// Each part of a multipart upload carries its CRC32C (`x-amz-checksum-crc32c`, declared at
    /// CreateMultipartUpload and repeated in CompleteMultipartUpload; a single PutObject carries Content-MD5), so
    /// the server refuses a part damaged on the way instead of storing it. The running checksum computes it as
    /// the file is written (hardware CRC32C, 23.5 GB/s here; the Content-MD5 it replaced cost 1.6 s of CPU per
    /// GiB); a part it did not see whole is read from the staged file once for it. The mount turns it on for plain-http endpoints and leaves it off over https, whose TLS records are
    /// authenticated already.
    public var partChecksums = true
    /// Every save of a file (each last close, each fsync) is uploaded, in order, so a versioned bucket keeps
    /// one S3 version per save; off (the default), a save still waiting for its upload is replaced by the next
    /// one of the same file (only the newest bytes go up). After a crash, saves acknowledged and not uploaded
    /// yet collapse to the newest one (the journal keeps the newest per file).
    public var keepEveryVersion = false
    /// A file written here is entered in the block cache when its upload lands (under its key and the ETag S3
    /// answered), so reading it back after its local copy goes, or after a remount on the same cache directory,
    /// sends no GET. Saves not read since take at most half of what the cache holds after eviction
    /// (`BlockCache.seedBound`), the oldest unread going first; a larger save is not entered. Done after the
    /// upload lands, off fsync's and flush's path.
    public var cacheSaves = true
    /// Where to record the blocks reads ask for, in order, as an access profile (`ckptfs mount --record FILE`,
    /// AccessProfile.swift); nil: nothing is recorded.
    public var recordAccess: String?

    public init() {}
}


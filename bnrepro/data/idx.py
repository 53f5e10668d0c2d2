"""IDX files (the (Fashion-)MNIST distribution format), plain or gzipped, and Fashion-MNIST: its loader and
its fetcher.

An IDX file is a big-endian header -- a 4-byte magic number whose third byte is the element type (0x08 for
uint8) and whose fourth byte is the number of dimensions, then one uint32 per dimension -- followed by the
elements in C order.

Fashion-MNIST comes from Debian's package ``dataset-fashion-mnist``, which installs its four gzipped IDX files in
``/usr/share/datasets/fashion-mnist``. :func:`fetch_fashion_mnist` does without installing it (no root needed): it
downloads the pinned ``.deb`` (with ``apt-get download``, which follows the machine's apt sources, else over HTTP
from the pool of the Debian mirror that ``$BNREPRO_DEBIAN_MIRROR`` or those sources name), checks its SHA-256,
takes the IDX files out of it in Python (a ``.deb`` is an ``ar`` archive whose ``data.tar.xz`` holds the files),
checks each file's SHA-256 and stores them in ``<cache>/fashion-mnist`` (the cache is
:func:`bnrepro.data.core.resolve_cache_dir`'s); the ``.deb`` is deleted.
"""

import gzip
import hashlib
import http.client
import io
import logging
import lzma
import math
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bnrepro.data.core import DataError, Split, make_cache_dir, make_split, resolve_cache_dir

LABELS_MAGIC = 0x801  # uint8, 1-D.
IMAGES_MAGIC = 0x803  # uint8, 3-D.
FASHION_MNIST_APT_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_PACKAGE_DIR = Path("usr/share/datasets/fashion-mnist")  # where the package puts the IDX files
FASHION_MNIST_DEBIAN_DIR = Path("/") / FASHION_MNIST_PACKAGE_DIR
FASHION_MNIST_ENV = "BNREPRO_FASHION_MNIST_DIR"
FASHION_MNIST_FETCH_COMMAND = "python -m bnrepro.data.fetch --dataset=fashion_mnist"
FASHION_MNIST_CACHE_SUBDIR = "fashion-mnist"  # inside the data cache directory
# The pinned package (Debian bookworm/main): its version, file name, folder in a mirror, and SHA-256.
FASHION_MNIST_DEB_VERSION = "0.0~git20200523.55506a9-1"
FASHION_MNIST_DEB = f"{FASHION_MNIST_APT_PACKAGE}_{FASHION_MNIST_DEB_VERSION}_all.deb"
FASHION_MNIST_POOL_PATH = f"pool/main/d/{FASHION_MNIST_APT_PACKAGE}"
FASHION_MNIST_DEB_SHA256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
# The IDX files the package installs into FASHION_MNIST_DEBIAN_DIR, and their SHA-256.
FASHION_MNIST_SHA256: Mapping[str, str] = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
# Split name -> (images file, labels file), each found with or without a ".gz" suffix.
FASHION_MNIST_FILES: Mapping[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_AR_MAGIC = b"!<arch>\n"
_AR_HEADER_SIZE = 60
# The data members a .deb may hold that tarfile reads (dpkg also writes data.tar.zst, which it cannot).
_TAR_MODES: Mapping[str, str] = {
    "data.tar": "r:",
    "data.tar.gz": "r:gz",
    "data.tar.xz": "r:xz",
    "data.tar.bz2": "r:bz2",
}

# The Debian mirror to download the .deb from over HTTP (the URL whose pool/ holds the packages); without it,
# the mirrors of the machine's apt sources under APT_DIR.
DEBIAN_MIRROR_ENV = "BNREPRO_DEBIAN_MIRROR"
APT_DIR = Path("/etc/apt")
# The URL schemes of apt sources that urllib opens (apt's cdrom:, mirror+http: and the like it does not).
_URL_SCHEMES = ("http", "https", "ftp", "file")
# A one-line-style binary source, `deb [options] URL suite [components]`; its URL is the group.
_ONE_LINE_DEB = re.compile(r"^[ \t]*deb[ \t]+(?:\[[^]\n]*\][ \t]*)?([^\s#]+)", re.MULTILINE)

_log = logging.getLogger(__name__)


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Reads a uint8 IDX file whose magic number must be ``expected_magic``; gzip is detected from the content."""
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise DataError(f"{path}: the gzip stream is truncated or corrupt ({e}); replace the file.") from e
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header; the file is truncated.")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path}: IDX magic number {magic:#x}, expected {expected_magic:#x} "
            f"({expected_magic & 0xFF}-D uint8); this is not the file it is named as."
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(
            f"{path}: the IDX header is cut short ({len(raw)} of {header_size} bytes); the file is truncated."
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data_size = len(raw) - header_size
    if data_size != math.prod(shape):
        raise DataError(
            f"{path}: the header declares shape {shape} ({math.prod(shape)} bytes of data) but the file holds "
            f"{data_size}; it is truncated or corrupt, replace it."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Returns the uint8 array of shape (N, rows, cols) stored in an IDX images file (magic 0x803).

    Raises:
      DataError: on a wrong magic number, a truncated file or a corrupt gzip stream.
    """
    return _read_idx(Path(path), IMAGES_MAGIC)


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Returns the uint8 array of shape (N,) stored in an IDX labels file (magic 0x801).

    Raises:
      DataError: on a wrong magic number, a truncated file or a corrupt gzip stream.
    """
    return _read_idx(Path(path), LABELS_MAGIC)


def _find_file(directory: Path, stem: str) -> Path | None:
    """Returns ``directory/stem`` or ``directory/stem.gz``, whichever exists first, else None."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_files(directory: Path) -> dict[str, Path | None]:
    """Fashion-MNIST file stem -> its path in ``directory`` (plain or gzipped), or None where it is missing."""
    return {stem: _find_file(directory, stem) for stems in FASHION_MNIST_FILES.values() for stem in stems}


def _has_all_files(directory: Path) -> bool:
    return all(path is not None for path in _find_files(directory).values())


def fashion_mnist_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Returns the folder :func:`fetch_fashion_mnist` stores the IDX files in: ``<data cache>/fashion-mnist``."""
    return resolve_cache_dir(cache_dir) / FASHION_MNIST_CACHE_SUBDIR


def fashion_mnist_files(data_dir: str | os.PathLike[str] | None = None) -> dict[str, tuple[Path, Path]]:
    """Locates the four Fashion-MNIST IDX files; never downloads.

    The folder is ``data_dir`` if given, else ``$BNREPRO_FASHION_MNIST_DIR`` if set, else the folder the Debian
    package ``dataset-fashion-mnist`` installs (``/usr/share/datasets/fashion-mnist``) if it holds all four files,
    else the folder :func:`fetch_fashion_mnist` fills (``<data cache>/fashion-mnist``).

    Returns:
      Split name -> (images path, labels path).

    Raises:
      DataError: naming the folder, where it came from, the missing files and the ways to provide them.
    """
    if data_dir is not None:
        directory, origin = Path(data_dir), "data_dir"
    elif env_dir := os.environ.get(FASHION_MNIST_ENV):
        directory, origin = Path(env_dir), f"${FASHION_MNIST_ENV}"
    elif _has_all_files(FASHION_MNIST_DEBIAN_DIR):
        directory, origin = FASHION_MNIST_DEBIAN_DIR, f"the installed {FASHION_MNIST_APT_PACKAGE}"
    else:
        directory, origin = fashion_mnist_cache_dir(), "the data cache"
    found = _find_files(directory)
    missing = [f"{stem}[.gz]" for stem, path in found.items() if path is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST IDX files not found in {directory} (from {origin}): missing {', '.join(missing)}. "
            f"Run `{FASHION_MNIST_FETCH_COMMAND}` (downloads the Debian package {FASHION_MNIST_APT_PACKAGE} into "
            f"the data cache, no root needed), or set {FASHION_MNIST_ENV} (or pass data_dir) to a folder holding "
            "them."
        )
    return {split: (found[images], found[labels]) for split, (images, labels) in FASHION_MNIST_FILES.items()}


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> dict[str, Split]:
    """Returns the Fashion-MNIST ``train`` and ``test`` splits read from IDX files, fetching them if need be.

    Like MNIST's :func:`bnrepro.data.mnist_offline.load`, loading fetches: when neither ``data_dir`` nor
    ``$BNREPRO_FASHION_MNIST_DIR`` is given and the Debian package is not installed, the files are read from the
    data cache, and :func:`fetch_fashion_mnist` first downloads them there if they are not there yet. A folder
    named by ``data_dir`` or the variable is only read.

    Args:
      data_dir: folder holding the IDX files; see :func:`fashion_mnist_files` for the default.

    Raises:
      DataError: if a file is missing, truncated, or images and labels disagree, or fetching fails.
    """
    fetched = (
        data_dir is None and not os.environ.get(FASHION_MNIST_ENV) and not _has_all_files(FASHION_MNIST_DEBIAN_DIR)
    )
    if fetched:
        data_dir = fetch_fashion_mnist()
    try:
        return {
            split: make_split(
                read_idx_images(images), read_idx_labels(labels), f"fashion_mnist {split} ({images.parent})"
            )
            for split, (images, labels) in fashion_mnist_files(data_dir).items()
        }
    except DataError as e:
        if not fetched:
            raise
        raise DataError(f"{e} Delete {data_dir} and re-run `{FASHION_MNIST_FETCH_COMMAND}`.") from e


def _run_apt_get_download(dest_dir: Path, version: str) -> Path:
    """Runs ``apt-get download dataset-fashion-mnist=VERSION`` in ``dest_dir``; returns the .deb's path.

    Raises:
      DataError: with the tail of apt-get's stderr if it fails, or if it leaves no single .deb.
    """
    command = ["apt-get", "download", "-q", f"{FASHION_MNIST_APT_PACKAGE}={version}"]
    result = subprocess.run(command, cwd=dest_dir, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DataError(
            f"`{' '.join(command)}` failed with exit code {result.returncode}:\n{result.stderr.strip()[-2000:]}"
        )
    debs = sorted(dest_dir.glob("*.deb"))
    if len(debs) != 1:
        raise DataError(f"`{' '.join(command)}` left {len(debs)} .deb files in {dest_dir}, expected exactly one.")
    return debs[0]


def _deb822_sources(text: str) -> list[str]:
    """The ``URIs:`` of the stanzas of a deb822-style ``.sources`` file whose ``Types:`` include ``deb``, but for
    those with ``Enabled: no``."""
    urls = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        name = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and name is not None:  # a folded field's continuation line
                fields[name] += " " + line.strip()
            elif ":" in line:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                fields[name] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            urls += fields.get("uris", "").split()
    return urls


def apt_mirrors(apt_dir: str | os.PathLike[str] = APT_DIR) -> list[str]:
    """The archive URLs of the binary (``deb``) sources configured under ``apt_dir``, in the order apt reads them.

    That is ``sources.list``, then the files of ``sources.list.d`` by name: ``*.list`` in the one-line style
    (``deb [options] URL suite [components]``), ``*.sources`` in the deb822 style (``Types: deb``, ``URIs: URL``);
    other files there are ignored, as apt ignores them. Only URLs that urllib opens are kept, each once.
    """
    apt_dir = Path(apt_dir)
    listed = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    urls = []
    for path in listed:
        if not path.is_file():
            continue
        if path.name == "sources.list" or path.suffix == ".list":
            urls += _ONE_LINE_DEB.findall(path.read_text(errors="replace"))
        elif path.suffix == ".sources":
            urls += _deb822_sources(path.read_text(errors="replace"))
    kept = [url for url in urls if urllib.parse.urlsplit(url).scheme in _URL_SCHEMES]
    return list(dict.fromkeys(kept))


def debian_mirrors(apt_dir: str | os.PathLike[str] = APT_DIR) -> list[str]:
    """The mirrors to download the .deb from over HTTP: ``$BNREPRO_DEBIAN_MIRROR`` if set, else
    :func:`apt_mirrors`.

    Raises:
      DataError: naming both when neither gives a mirror.
    """
    mirror = os.environ.get(DEBIAN_MIRROR_ENV)
    if mirror:
        return [mirror]
    mirrors = apt_mirrors(apt_dir)
    if not mirrors:
        raise DataError(
            f"No Debian mirror to download {FASHION_MNIST_APT_PACKAGE} from: {DEBIAN_MIRROR_ENV} is not set and "
            f"apt's sources ({Path(apt_dir) / 'sources.list'}, {Path(apt_dir) / 'sources.list.d'}/) list no `deb` "
            f"entry. Set {DEBIAN_MIRROR_ENV} to a Debian mirror's URL (the one whose pool/ holds the packages)."
        )
    return mirrors


def download_deb_http(
    dest_dir: Path, version: str = FASHION_MNIST_DEB_VERSION, apt_dir: str | os.PathLike[str] = APT_DIR
) -> Path:
    """Downloads the ``dataset-fashion-mnist`` .deb of ``version`` into ``dest_dir`` with urllib (no apt needed)
    from the pool of each of :func:`debian_mirrors` in turn, until one has it; returns the file's path.

    Raises:
      DataError: if there is no mirror, or the download failed from each, with each one's error.
    """
    deb = f"{FASHION_MNIST_APT_PACKAGE}_{version}_all.deb"
    errors = []
    for mirror in debian_mirrors(apt_dir):
        url = f"{mirror.rstrip('/')}/{FASHION_MNIST_POOL_PATH}/{deb}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(dest_dir / deb, "wb") as f:
                shutil.copyfileobj(response, f)
            return dest_dir / deb
        except (OSError, http.client.HTTPException) as e:  # urllib's URLError and HTTPError are OSErrors
            errors.append(f"Downloading {url} failed ({e}).")
    raise DataError("\n".join(errors))


def download_deb(dest_dir: Path, version: str = FASHION_MNIST_DEB_VERSION) -> Path:
    """Downloads (never installs) the ``dataset-fashion-mnist`` .deb of ``version`` into ``dest_dir``.

    ``apt-get download`` is used where apt-get exists, so the machine's apt sources and proxies apply; where it
    does not, or it fails (no package lists, say), the file is fetched over HTTP (:func:`download_deb_http`) from
    ``$BNREPRO_DEBIAN_MIRROR`` or the mirrors of the machine's apt sources. Either way the caller checks the
    file's SHA-256.

    Raises:
      DataError: if every way failed, with each one's error.
    """
    errors = []
    if shutil.which("apt-get"):
        try:
            return _run_apt_get_download(dest_dir, version)
        except DataError as e:
            errors.append(str(e))
    try:
        return download_deb_http(dest_dir, version)
    except DataError as e:
        errors.append(str(e))
    raise DataError(
        f"Could not download the Debian package {FASHION_MNIST_APT_PACKAGE} {version}:\n"
        + "\n".join(errors)
        + f"\nCheck that the network (or apt's mirror) is reachable and re-run `{FASHION_MNIST_FETCH_COMMAND}`, "
        f"or set {FASHION_MNIST_ENV} to a folder holding the four IDX files."
    )


def _ar_members(archive: bytes, path: Path) -> dict[str, bytes]:
    """Member name -> content of the ``ar`` archive ``archive`` (a .deb) read from ``path``.

    The format: ``!<arch>\\n``, then per member a 60-byte header (name 16, mtime 12, uid 6, gid 6, mode 8,
    size 10 bytes, all ASCII, then a backquote and a newline) and the content, padded to an even length.

    Raises:
      DataError: if the archive is not an ar archive or is cut short.
    """
    if not archive.startswith(_AR_MAGIC):
        raise DataError(f"{path} is not a Debian package (no ar archive header); the download is damaged.")
    members = {}
    offset = len(_AR_MAGIC)
    while offset < len(archive):
        header = archive[offset : offset + _AR_HEADER_SIZE]
        start = offset + _AR_HEADER_SIZE
        size_field = header[48:58].strip()
        if len(header) < _AR_HEADER_SIZE or header[58:] != b"`\n" or not size_field.isdigit():
            raise DataError(f"{path}: corrupt ar member header at byte {offset}; the archive is damaged.")
        name = header[:16].decode("ascii", "replace").rstrip().removesuffix("/")
        size = int(size_field)
        if start + size > len(archive):
            raise DataError(
                f"{path}: ar member {name} is cut short ({len(archive) - start} of {size} bytes); "
                "the archive is truncated."
            )
        members[name] = archive[start : start + size]
        offset = start + size + size % 2
    return members


def extract_deb(
    deb_path: str | os.PathLike[str],
    dest_dir: Path,
    *,
    expected_sha256: str = FASHION_MNIST_DEB_SHA256,
    file_sha256: Mapping[str, str] = FASHION_MNIST_SHA256,
) -> None:
    """Checks the .deb's SHA-256, then writes the files of ``file_sha256`` it installs into
    ``/usr/share/datasets/fashion-mnist`` to ``dest_dir`` once every one's SHA-256 is checked.

    Raises:
      DataError: naming the file, on a SHA-256 mismatch, a corrupt archive or a missing member.
    """
    deb_path = Path(deb_path)
    archive = deb_path.read_bytes()
    digest = hashlib.sha256(archive).hexdigest()
    if digest != expected_sha256:
        raise DataError(
            f"sha256 mismatch for {deb_path}: got {digest}, expected {expected_sha256}. The download is corrupt "
            f"or is not {FASHION_MNIST_DEB}; re-run `{FASHION_MNIST_FETCH_COMMAND}`."
        )
    members = _ar_members(archive, deb_path)
    data_names = [name for name in members if name.startswith("data.tar")]
    if len(data_names) != 1:
        raise DataError(f"{deb_path} holds {sorted(members)}, not one data.tar.*; it is not a Debian package.")
    if data_names[0] not in _TAR_MODES:
        raise DataError(f"{deb_path}: {data_names[0]} is compressed in a way Python's tarfile cannot read.")
    prefix = FASHION_MNIST_PACKAGE_DIR
    try:
        with tarfile.open(fileobj=io.BytesIO(members[data_names[0]]), mode=_TAR_MODES[data_names[0]]) as tar:
            by_name = {Path(member.name.removeprefix("./")): member for member in tar.getmembers()}
            missing = [name for name in file_sha256 if prefix / name not in by_name]
            if missing:
                raise DataError(
                    f"{deb_path}: {data_names[0]} lacks {', '.join(f'/{prefix}/{name}' for name in missing)}; "
                    f"it is not the {FASHION_MNIST_APT_PACKAGE} package."
                )
            contents = {name: tar.extractfile(by_name[prefix / name]).read() for name in file_sha256}
    except (tarfile.TarError, lzma.LZMAError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{deb_path}: cannot read {data_names[0]} ({e}); the archive is corrupt.") from e
    for name, content in contents.items():
        digest = hashlib.sha256(content).hexdigest()
        if digest != file_sha256[name]:
            raise DataError(
                f"sha256 mismatch for /{prefix}/{name} in {deb_path}: got {digest}, expected {file_sha256[name]}."
            )
    for name, content in contents.items():
        (dest_dir / name).write_bytes(content)


def fetch_fashion_mnist(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Makes sure the four Fashion-MNIST IDX files are in ``<data cache>/fashion-mnist`` and returns that folder.

    If any is missing, the pinned ``dataset-fashion-mnist`` .deb is downloaded (see :func:`download_deb`) into a
    temporary folder inside the cache, checked and unpacked by :func:`extract_deb`; the folder of IDX files
    then replaces ``fashion-mnist`` in one rename, and the .deb is deleted. A process that loses a race to
    another one fetching at the same time uses the winner's folder.

    Args:
      cache_dir: the data cache; see :func:`bnrepro.data.core.resolve_cache_dir` for the default.

    Raises:
      DataError: if the cache cannot be created, the download fails, or the .deb or a file in it is not the
        pinned one.
    """
    target = fashion_mnist_cache_dir(cache_dir)
    if _has_all_files(target):
        return target
    root = make_cache_dir(cache_dir)
    _log.info("Fetching Fashion-MNIST: downloading %s into %s", FASHION_MNIST_DEB, root)
    with tempfile.TemporaryDirectory(dir=root, prefix=f"{FASHION_MNIST_CACHE_SUBDIR}-") as tmp:
        staged = Path(tmp) / FASHION_MNIST_CACHE_SUBDIR
        staged.mkdir()
        extract_deb(download_deb(Path(tmp)), staged)
        if not _has_all_files(target):  # else a concurrent fetch finished first
            if target.exists():  # incomplete: a file was deleted
                shutil.rmtree(target)
            try:
                os.replace(staged, target)
            except OSError:
                if not _has_all_files(target):  # not a concurrent fetch that finished in between
                    raise
    _log.info("Cached Fashion-MNIST in %s", target)
    return target

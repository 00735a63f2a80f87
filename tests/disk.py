"""
A small file system for tests of a full disk: a tmpfs of a few MiB mounted
on a test's temporary directory (the tests run as root, as CI does), and a
filler file that uses up its space.  Mount failures fail the test: a full
disk cannot be faked faithfully without one.
"""

import os
import subprocess


def small_disk(testcase, size: str = "2m") -> str:
    """
    Mount a tmpfs of C{size} on a new directory of C{testcase}, unmounted
    when the test ends.

    @return: the directory.
    """
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", directory], capture_output=True, text=True
    )
    if done.returncode != 0:
        testcase.fail(f"cannot mount a {size} tmpfs on {directory} (run the tests as root): {done.stderr.strip()}")
    testcase.addCleanup(subprocess.run, ["umount", "-l", directory], check=True)
    return directory


def free_bytes(directory: str) -> int:
    """
    Bytes free on the file system of C{directory}.
    """
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def fill(directory: str, leave: int = 0) -> str:
    """
    Write a filler file in C{directory} until about C{leave} bytes are free
    (none when C{leave} is 0).

    @return: the filler's path.
    """
    path = os.path.join(directory, "filler")
    with open(path, "ab", buffering=0) as f:
        for chunk in (65536, 4096, 1):
            try:
                while free_bytes(directory) > leave:
                    f.write(b"\0" * min(chunk, max(1, free_bytes(directory) - leave)))
            except OSError:
                pass  # full at this chunk size; smaller ones fill the rest
    return path


def release(filler: str, amount: int) -> None:
    """
    Free C{amount} bytes by shortening the filler file.
    """
    os.truncate(filler, max(0, os.path.getsize(filler) - amount))

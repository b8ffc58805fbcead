"""
Hold the first open(2) of FILE (fanotify FAN_OPEN_PERM: the opener waits for
our answer) and change the tree before letting it through: a race between a
command's stat of an entry and its read of it, provoked every time.

  on-open.py FILE rewrite CONTENT MODE MTIME XATTR [grow]   FILE itself, through the event's descriptor
  on-open.py FILE remove PATH                               another entry (an upper's copy of a lower file)

With `grow`, every read(2) of FILE after that waits while a line is appended to it (a log
written all the time, provoked on every read), until this is killed.
Prints "ready" once the mark is set; exits after the first open (without `grow`).
"""
import ctypes, os, struct, sys

FAN_CLOEXEC, FAN_CLASS_CONTENT, FAN_MARK_ADD, FAN_ALLOW = 0x1, 0x4, 0x1, 0x1
FAN_OPEN_PERM, FAN_ACCESS_PERM = 0x10000, 0x20000
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
action = sys.argv[2]
grow = action == "rewrite" and sys.argv[7:8] == ["grow"]
mask = FAN_OPEN_PERM | (FAN_ACCESS_PERM if grow else 0)
group = libc.fanotify_init(FAN_CLOEXEC | FAN_CLASS_CONTENT, os.O_RDWR | os.O_LARGEFILE)
if group < 0 or libc.fanotify_mark(group, FAN_MARK_ADD, mask, -100, os.fsencode(sys.argv[1])) < 0:
    sys.exit(f"fanotify: {os.strerror(ctypes.get_errno())}")
print("ready", flush=True)


def first_open(fd):
    if action == "rewrite":
        content, mode, mtime, xattr = sys.argv[3:7]
        os.ftruncate(fd, 0)
        os.pwrite(fd, content.encode(), 0)
        os.fchmod(fd, int(mode, 8))
        os.setxattr(fd, "user.version", xattr.encode())
        os.utime(fd, ns=(int(mtime) * 10**9, int(mtime) * 10**9))
    elif action == "remove":
        os.unlink(sys.argv[3])


opened = False
while True:
    events = os.read(group, 4096)
    for offset in range(0, len(events), 24):
        _, _, _, _, event, fd, _ = struct.unpack_from("@IBBHQii", events, offset)
        if event & FAN_OPEN_PERM and not opened:
            first_open(fd)
            opened = True
        elif event & FAN_ACCESS_PERM:
            os.pwrite(fd, b"more\n", os.fstat(fd).st_size)
        os.write(group, struct.pack("@iI", fd, FAN_ALLOW))
        os.close(fd)
    if opened and not grow:
        break

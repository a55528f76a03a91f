/* The floor a durable runner cannot beat (issue 12), built by scripts/bench.py:
 * inotify on DIR; for each file moved in, read it, append "starting NAME" to RECORD
 * and fdatasync it (the ledger before the action), then posix_spawn `sh -c TEXT`. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/inotify.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    struct sigaction sa = {0};
    sa.sa_handler = SIG_IGN;
    sa.sa_flags = SA_NOCLDWAIT; /* children are reaped by the kernel */
    sigaction(SIGCHLD, &sa, NULL);
    int in = inotify_init1(0);
    if (in < 0 || inotify_add_watch(in, argv[1], IN_MOVED_TO) < 0) return 1;
    int rec = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (rec < 0) return 1;
    static char events[65536] __attribute__((aligned(8)));
    static char text[65536];
    char path[PATH_MAX], line[PATH_MAX + 16];
    for (;;) {
        ssize_t n = read(in, events, sizeof events);
        if (n <= 0) return 1;
        for (char *p = events; p < events + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            p += sizeof *ev + ev->len;
            if (!ev->len || ev->name[0] == '.') continue; /* temp files */
            snprintf(path, sizeof path, "%s/%s", argv[1], ev->name);
            int fd = open(path, O_RDONLY);
            if (fd < 0) continue;
            ssize_t m = read(fd, text, sizeof text - 1);
            close(fd);
            if (m < 0) continue;
            text[m] = 0;
            int len = snprintf(line, sizeof line, "starting %s\n", ev->name);
            if (write(rec, line, len) != len || fdatasync(rec) != 0) return 1;
            char *args[] = {"sh", "-c", text, NULL};
            pid_t pid;
            posix_spawn(&pid, "/bin/sh", NULL, NULL, args, environ);
        }
    }
}

/* The Pod sandbox's pause process for the real-node tier's pause image: it holds the Pod's
 * namespaces, reaps orphans and exits on SIGINT or SIGTERM. Built static by build-images.sh. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, 0, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction term = {0};
  term.sa_handler = stop;
  sigaction(SIGINT, &term, 0);
  sigaction(SIGTERM, &term, 0);
  struct sigaction child = {0};
  child.sa_handler = reap;
  child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  sigaction(SIGCHLD, &child, 0);
  for (;;) {
    pause();
  }
}

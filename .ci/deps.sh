#!/usr/bin/env bash
# The Debian packages the tests need (.ci/apt-packages), installed when this shell can (root + apt-get); otherwise
# the tests that will skip and the one command that enables them. Never fails: a missing package skips tests.
#   bash .ci/deps.sh          install what is missing (or explain)
#   bash .ci/deps.sh --check  only list what is missing
set -uo pipefail
list="${HWNAS_APT_PACKAGES:-$(dirname "$0")/apt-packages}"
present() { case "$1" in /*) [ -e "$1" ] ;; *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] ;; esac; }
need=() skips=()
while read -r pkg probe what; do
  case "$pkg" in ''|'#'*) continue ;; esac
  present "$probe" || { need+=("$pkg"); skips+=("  $pkg: $what"); }
done < "$list"
[ ${#need[@]} -eq 0 ] && { echo "system packages: all present (${list})"; exit 0; }
if [ "${1:-}" != "--check" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; then exit 0; fi
  echo "apt-get failed; continuing without: ${need[*]}"
fi
echo "missing system packages; these tests will skip:"
printf '%s\n' "${skips[@]}"
echo "enable them with: sudo apt-get install -y --no-install-recommends ${need[*]}   (then make test again)"
exit 0

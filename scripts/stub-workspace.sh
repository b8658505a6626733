#!/bin/sh
# Writes a stub for every target of the workspace's members, from their
# manifests alone: the Dockerfile's dependency layer builds every dependency
# with these before the real sources are copied. Run at the workspace's root,
# where only the manifests are; the stubs are listed on stdout.
set -eu
for manifest in */Cargo.toml; do
  member=${manifest%/Cargo.toml}
  echo "$member/src/lib.rs"
  echo "$member/src/main.rs"
  # [[bench]], [[test]], [[example]] and [[bin]]: their `path`, or the file
  # their `name` is looked for at.
  awk -v member="$member" '
    function value(line) { sub(/^[^=]*= *"/, "", line); sub(/".*/, "", line); return line }
    function folder(kind) {
      return kind == "bench" ? "benches" : kind == "test" ? "tests" : kind == "example" ? "examples" : "src/bin"
    }
    function flush() {
      if (kind != "" && name != "") {
        if (path == "") path = folder(kind) "/" name ".rs"
        print member "/" path
      }
      kind = ""; name = ""; path = ""
    }
    /^\[\[(bench|test|example|bin)\]\]/ { flush(); kind = $0; gsub(/[][ ]/, "", kind); next }
    /^\[/ { flush(); next }
    kind != "" && /^name *=/ { name = value($0) }
    kind != "" && /^path *=/ { path = value($0) }
    END { flush() }
  ' "$manifest"
done | while read -r stub; do
  mkdir -p "$(dirname "$stub")"
  echo 'pub fn main() {}' > "$stub"
  echo "$stub"
done

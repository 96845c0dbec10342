#!/usr/bin/env bash
# Vendor the JavaScript the built book needs, so the HTML works with no network:
#   require.js + @jupyter-widgets/html-manager (embed-amd.js) for widget outputs, MathJax 3 for the maths.
# Everything comes from the npm registry through `npm pack` (the only registry reachable besides PyPI/Debian)
# and lands in _static_vendor/ at the repo root (gitignored). _config.yml lists _static_vendor in
# html_static_path, so the files end up under _build/html/_static/vendor/.
# Idempotent: a stamp naming the pinned versions short-circuits a second run.
set -euo pipefail
cd "$(dirname "$0")/.."

HTML_MANAGER="@jupyter-widgets/html-manager@1.0.6"
REQUIREJS="requirejs@2.3.8"
MATHJAX="mathjax@3.2.2"

DEST="_static_vendor/vendor"
STAMP="_static_vendor/.stamp"
WANT="$HTML_MANAGER $REQUIREJS $MATHJAX"

required_files=(
  "$DEST/require/require.js"
  "$DEST/html-manager/embed-amd.js"
  "$DEST/mathjax/tex-chtml.js"
  "$DEST/mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff"
)

up_to_date() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] || return 1
  for f in "${required_files[@]}"; do [ -s "$f" ] || return 1; done
}

if up_to_date; then
  echo "vendor_js: up to date ($WANT)"
  exit 0
fi

command -v npm >/dev/null || { echo "vendor_js: npm is required (apt-get install -y npm)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "vendor_js: fetching $WANT"
(cd "$work" && npm pack --silent "$HTML_MANAGER" "$REQUIREJS" "$MATHJAX" >/dev/null)
for tgz in "$work"/*.tgz; do
  name="$(basename "$tgz" .tgz)"
  mkdir -p "$work/$name"
  tar xzf "$tgz" -C "$work/$name"
done
hm="$(echo "$work"/jupyter-widgets-html-manager-*/package)"
rq="$(echo "$work"/requirejs-*/package)"
mj="$(echo "$work"/mathjax-*/package)"

rm -rf "$DEST" "$STAMP"
mkdir -p "$DEST/require" "$DEST/html-manager" "$DEST/mathjax"

cp "$rq/require.js" "$DEST/require/"
cp "$rq/LICENSE" "$DEST/require/" 2>/dev/null || true

# embed-amd.js plus the icon fonts its CSS refers to by hashed name; the source maps and
# the non-AMD bundles are not needed.
cp "$hm/dist/embed-amd.js" "$DEST/html-manager/"
cp "$hm"/dist/*.woff "$hm"/dist/*.woff2 "$hm"/dist/*.ttf "$hm"/dist/*.eot "$hm"/dist/*.svg "$DEST/html-manager/"
cp "$hm/LICENSE" "$DEST/html-manager/" 2>/dev/null || true

# MathJax finds its extensions, fonts and menu relative to the script's own URL, so keep the
# es5/ layout: the tex-chtml component and the folders it loads from at run time.
cp "$mj/es5/tex-chtml.js" "$DEST/mathjax/"
for d in input output ui a11y adaptors sre; do
  cp -r "$mj/es5/$d" "$DEST/mathjax/"
done
cp "$mj/LICENSE" "$DEST/mathjax/" 2>/dev/null || true

for f in "${required_files[@]}"; do
  [ -s "$f" ] || { echo "vendor_js: missing $f after unpacking" >&2; exit 1; }
done
echo "$WANT" > "$STAMP"
echo "vendor_js: done ($(du -sh _static_vendor | cut -f1) in _static_vendor/)"

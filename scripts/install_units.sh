#!/usr/bin/env bash
# Install the BotAI systemd units (deploy/systemd/) so that no process runs unsupervised:
# systemd restarts `botai up` when it dies (Restart=on-failure) and the new one adopts the
# services the old one left running.
#
#   sudo scripts/install_units.sh [--user USER] [--home DIR] [--dest DIR] [--etc DIR]
#
#   --user  the account the services run as (default: botai; created when missing)
#   --home  the checkout with its .venv (default: this checkout)
#   --dest  where the units go (default: /etc/systemd/system; another folder only renders
#           them there, with no systemctl calls and no account created)
#   --etc   settings folder (default: /etc/botai): botai.env from botai.env.example when
#           missing (never overwritten), and secrets/ (0700) for one file per secret
#
# Then: the all-in-one host   `systemctl enable --now botai`
#       or one role per host  `systemctl enable --now botai-worker` (server, gateway, recovery)
set -euo pipefail

user=botai
home="$(cd "$(dirname "$0")/.." && pwd)"
dest=/etc/systemd/system
etc=/etc/botai
while [[ $# -gt 0 ]]; do
    case "$1" in
        --user) user="$2"; shift 2 ;;
        --home) home="$(cd "$2" && pwd)"; shift 2 ;;
        --dest) dest="$2"; shift 2 ;;
        --etc) etc="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install_units.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ ! -x "$home/.venv/bin/botai" ]]; then
    echo "install_units.sh: $home/.venv/bin/botai not found: run scripts/up.sh once there" \
        "(it creates the .venv) or pass --home" >&2
    exit 1
fi
if [[ "$home" == *[\ @\|]* || "$user" == *[\ @\|]* ]]; then
    echo "install_units.sh: --home and --user must not contain spaces, '@' or '|'" >&2
    exit 2
fi
live=0
[[ "$dest" == /etc/systemd/system ]] && live=1

if [[ $live == 1 ]] && ! id -u "$user" >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/botai --shell /usr/sbin/nologin "$user"
fi
mkdir -p "$dest" "$etc/secrets"
chmod 0700 "$etc/secrets"
if [[ ! -e "$etc/botai.env" ]]; then
    install -m 0644 "$home/deploy/systemd/botai.env.example" "$etc/botai.env"
fi
for unit in "$home"/deploy/systemd/*.service; do
    sed -e "s|@BOTAI_HOME@|$home|g" -e "s|@BOTAI_USER@|$user|g" -e "s|/etc/botai/|$etc/|g" \
        "$unit" > "$dest/$(basename "$unit")"
    chmod 0644 "$dest/$(basename "$unit")"
    echo "installed $dest/$(basename "$unit")"
done
if [[ $live == 1 ]]; then
    systemctl daemon-reload
    echo "now: systemctl enable --now botai   (or one role: botai-server, botai-worker, ...)"
fi

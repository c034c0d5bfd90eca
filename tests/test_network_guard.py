import socket

import pytest


def test_socket_guard_blocks_outside_addresses():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(RuntimeError, match="network access attempted"):
            s.connect(("93.184.216.34", 80))
    finally:
        s.close()


@pytest.mark.shipped  # reads the shipped data/
def test_loading_shipped_assets_needs_no_network():
    # Runs under the guard: any hub lookup would raise instead of silently downloading.
    from pref_lab.models import load_model, load_tokenizer

    load_tokenizer()
    load_model("base")

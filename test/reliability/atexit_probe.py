"""A matcher plugin module (``ROMAV2_MATCHER_PLUGINS``) that registers an atexit handler
writing the file named by ``ROMAV2_TEST_ATEXIT_FILE``: whether the node's exit runs them."""
import atexit
import os

PATH = os.environ.get('ROMAV2_TEST_ATEXIT_FILE')
if PATH:
    atexit.register(lambda: open(PATH, 'w', encoding='utf-8').write('atexit ran\n'))

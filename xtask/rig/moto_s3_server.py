"""moto's S3 server with conditional PutObject made atomic, for lease's test rig.

moto 5 checks a PUT's If-Match / If-None-Match against the stored object and then stores the new
object as two separate steps, with no lock between them (moto/s3/responses.py, `put_object`).
Its server is threaded, so two concurrent PUTs conditional on the same ETag can both pass the
check and both succeed: two writers each told they replaced the version they read. S3 (and every
store lease-objstore supports) makes a conditional write atomic, and the lease protocol relies on
exactly that. A 100,000-acquisition torture run found it (docs/safety.md, "moto's conditional
PUT is not atomic"); this wrapper serializes PutObject so the rig tests the library, not that race.

LEASE_MOTO_SWITCH_INTERVAL (seconds) and LEASE_MOTO_UNLOCKED=1 exist only for the race check
in xtask/rig/moto_if_match_race.py: a tiny interpreter switch interval makes the race show up
in seconds, and UNLOCKED shows it is the lock that removes it.
"""

import os
import sys
import threading

from moto.s3.responses import S3Response
from moto.server import main

if os.environ.get("LEASE_MOTO_SWITCH_INTERVAL"):
    sys.setswitchinterval(float(os.environ["LEASE_MOTO_SWITCH_INTERVAL"]))

if os.environ.get("LEASE_MOTO_UNLOCKED") != "1":
    _put_object = S3Response.put_object
    _put_lock = threading.Lock()

    def put_object(self, *args, **kwargs):
        with _put_lock:
            return _put_object(self, *args, **kwargs)

    S3Response.put_object = put_object

if __name__ == "__main__":
    sys.exit(main())

"""kombu's filesystem transport, with messages written atomically.

kombu's filesystem channel creates a message file and then writes into it; a worker polling the
folder can move and read the file in between, get an empty message and die (seen here when the
scheduler and the server enqueue while the worker polls). Writing under a temporary name and then
renaming makes each message appear whole or not at all. Used only for the embedded default broker.
"""

import os
import uuid
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        # A leading dot: kombu's reader only picks up names of the form "<stamp>.<queue>.msg".
        temporary = os.path.join(self.data_folder_out, f".{uuid.uuid4()}.partial")
        try:
            with open(temporary, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(temporary, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {name!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel

"""How much a kernel event socket may hold, and how much of it one wakeup reads.

Shared by the uevent and the rtnetlink monitors, which read their sockets from
the asyncio loop: thousands of VFs created at once make a storm of both.
"""

# A socket buffer that survives the uevent and link-message storm of thousands
# of VFs created at once; setting it needs CAP_NET_ADMIN, which the daemon has.
RECEIVE_BUFFER_BYTES = 8 << 20
MAX_EVENTS_PER_WAKEUP = 1024  # then yield to the loop; the reader fires again

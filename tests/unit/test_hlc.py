"""dwcp.cluster.hlc: readings follow the wall clock and never go backwards."""

from __future__ import annotations

from dwcp.cluster.hlc import HLC, LOGICAL_BITS


def test_readings_follow_the_clock_and_survive_it_stepping_back():
    wall = [1000]
    c = HLC(lambda: wall[0])
    a = c.now()
    assert a == 1000 << LOGICAL_BITS and HLC.physical_ms(a) == 1000
    b = c.now()  # the same millisecond: the logical part counts
    assert b == a + 1
    wall[0] = 900  # the clock steps back (NTP): readings still increase
    assert c.now() == b + 1
    wall[0] = 2000
    assert c.now() == 2000 << LOGICAL_BITS


def test_a_later_reading_seen_elsewhere_orders_what_follows():
    c = HLC(lambda: 1000)
    far = 5000 << LOGICAL_BITS
    c.observe(far)
    assert c.now() == far + 1
    c.observe(10)  # an older one changes nothing
    assert c.now() == far + 2

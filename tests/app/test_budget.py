"""The memory budget: reservations within the limit, forced charges beyond it, and releases."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from app.budget import MemoryBudget, Reservation


def test_reservations_fit_within_the_limit_and_no_further() -> None:
    budget = MemoryBudget(100)
    assert budget.try_reserve(60)
    assert not budget.try_reserve(41)
    assert budget.in_flight_bytes == 60
    assert budget.try_reserve(40)
    assert budget.in_flight_bytes == 100
    budget.release(100)
    assert budget.in_flight_bytes == 0


def test_charges_count_beyond_the_limit_and_leave_no_room_for_reservations() -> None:
    budget = MemoryBudget(100)
    with budget.charged(150):
        assert budget.in_flight_bytes == 150
        assert not budget.try_reserve(1)
    assert budget.in_flight_bytes == 0
    assert budget.try_reserve(100)


def test_a_reservation_releases_everything_it_added() -> None:
    budget = MemoryBudget(100)
    reservation = Reservation(budget)
    assert reservation.try_add(30)
    assert reservation.try_add(30)
    assert not reservation.try_add(50)
    assert (reservation.held_bytes, budget.in_flight_bytes) == (60, 60)
    reservation.release_all()
    assert (reservation.held_bytes, budget.in_flight_bytes) == (0, 0)


def test_concurrent_charges_from_threads_add_up_exactly() -> None:
    budget = MemoryBudget(10)

    def charge_and_release(_: int) -> None:
        for _ in range(1000):
            budget.charge(3)
            budget.release(3)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(charge_and_release, range(4)))
    assert budget.in_flight_bytes == 0

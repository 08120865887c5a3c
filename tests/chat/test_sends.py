"""Group commit: a batch of sends keeps every per-send rule of PROTOCOL 6."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest

from accounts.models import User
from realtime.chat import sends
from realtime.chat.conversations import new_conversation_id
from realtime.chat.messages import Sent
from realtime.chat.send_queue import SendQueue
from realtime.chat.sends import SendRequest, store_sends
from realtime.models import Conversation, Membership, Message
from realtime.protocol import Code, TetherError
from tests.support.services import postgres_service, rerun_on_postgresql  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db(transaction=True)


def conversation(*members: User) -> str:
    conv = Conversation.objects.create(
        id=new_conversation_id(), kind="group", title="t", created_by=members[0]
    )
    Membership.objects.bulk_create([Membership(conversation=conv, user=u) for u in members])
    return conv.id


@pytest.fixture
def people() -> list[User]:
    return [User.objects.create(username=f"batch{i}") for i in range(3)]


def test_one_batch_numbers_each_conversation_gap_free(people: list[User]) -> None:
    a, b, c = people
    one, two = conversation(a, b), conversation(b, c)
    store_sends([SendRequest(a, one, "before", "first")])  # seq 1 of `one`
    requests = [
        SendRequest(a, one, "a1", "x"),
        SendRequest(b, two, "b1", "y"),
        SendRequest(b, one, "b2", "z"),
        SendRequest(c, two, "c1", "w"),
        SendRequest(a, one, "a2", "<b>as written</b> ✓"),
    ]
    results = store_sends(requests)
    assert all(isinstance(r, Sent) and not r.duplicate for r in results)
    assert [r.message.seq for r in results] == [2, 1, 3, 2, 4]
    assert [m.seq for m in Message.objects.filter(conversation_id=one).order_by("seq")] == [
        1,
        2,
        3,
        4,
    ]
    assert Message.objects.get(sender=a, client_id="a2").body == "<b>as written</b> ✓"
    assert Conversation.objects.get(pk=one).last_seq == 4
    assert Conversation.objects.get(pk=two).last_seq == 2
    # Sending implies having read up to one's own latest message.
    assert Membership.objects.get(conversation_id=one, user=a).read_seq == 4
    assert Membership.objects.get(conversation_id=one, user=b).read_seq == 3
    assert Membership.objects.get(conversation_id=two, user=c).read_seq == 2


def test_repeated_keys_in_and_before_the_batch_are_duplicates(people: list[User]) -> None:
    a, b, _ = people
    cid = conversation(a, b)
    (earlier,) = store_sends([SendRequest(a, cid, "k0", "stored before")])
    results = store_sends(
        [
            SendRequest(a, cid, "k1", "new"),
            SendRequest(a, cid, "k0", "again"),
            SendRequest(a, cid, "k1", "new, twice in one batch"),
            SendRequest(b, cid, "k1", "another user's k1 is another key"),
        ]
    )
    new, old, twice, other = results
    assert isinstance(new, Sent) and not new.duplicate and new.message.seq == 2
    assert isinstance(old, Sent) and old.duplicate
    assert old.ack("r")["message_id"] == earlier.message.id and old.message.seq == 1
    assert isinstance(twice, Sent) and twice.duplicate and twice.message.id == new.message.id
    assert isinstance(other, Sent) and not other.duplicate and other.message.seq == 3
    assert Message.objects.filter(conversation_id=cid).count() == 3
    # Seqs taken for the duplicates were given back: the next one follows on.
    assert Conversation.objects.get(pk=cid).last_seq == 3
    (again,) = store_sends([SendRequest(a, cid, "k0", "only a duplicate")])
    assert isinstance(again, Sent) and again.duplicate
    assert Conversation.objects.get(pk=cid).last_seq == 3
    (after,) = store_sends([SendRequest(b, cid, "k9", "next")])
    assert isinstance(after, Sent) and after.message.seq == 4


def test_non_members_and_unknown_conversations_get_forbidden(people: list[User]) -> None:
    a, b, c = people
    cid = conversation(a, b)
    results = store_sends(
        [
            SendRequest(c, cid, "x1", "not a member"),
            SendRequest(a, "no-such-conversation", "x2", "nowhere"),
            SendRequest(a, cid, "x3", "fine"),
        ]
    )
    assert isinstance(results[0], TetherError) and results[0].code == Code.FORBIDDEN
    assert isinstance(results[1], TetherError) and results[1].code == Code.FORBIDDEN
    assert results[0].message == results[1].message  # the same answer for both
    assert isinstance(results[2], Sent) and results[2].message.seq == 1
    assert Conversation.objects.get(pk=cid).last_seq == 1  # the forbidden send's seq went back


def test_a_key_refused_in_one_conversation_is_stored_in_the_next_as_one_by_one(
    people: list[User],
) -> None:
    """The same key aimed first where the sender may not write, then at one of their
    conversations, in one batch: answered as one send at a time would be (forbidden,
    then stored, then a duplicate of it), and the seqs stay those of the rows."""
    a, b, c = people
    mine, theirs, other = conversation(a, b), conversation(b, c), conversation(a, c)
    results = store_sends(
        [
            SendRequest(a, "no-such", "k", "nowhere"),
            SendRequest(a, theirs, "k", "not a member"),
            SendRequest(a, mine, "k", "stored"),
            SendRequest(a, mine, "j", "next"),
            SendRequest(a, other, "k", "the key is taken: the first message back"),
            SendRequest(a, theirs, "only-refused", "never stored"),
        ]
    )
    codes = [r.code for r in results if isinstance(r, TetherError)]
    assert codes == [Code.FORBIDDEN, Code.FORBIDDEN, Code.FORBIDDEN]
    stored, following, again = results[2], results[3], results[4]
    assert isinstance(stored, Sent) and not stored.duplicate and stored.message.seq == 1
    assert isinstance(following, Sent) and following.message.seq == 2
    assert isinstance(again, Sent) and again.duplicate and again.message.id == stored.message.id
    heads = dict(Conversation.objects.values_list("id", "last_seq"))
    assert (heads[mine], heads[theirs], heads[other]) == (2, 0, 0)
    (later,) = store_sends([SendRequest(b, mine, "b1", "after")])
    assert isinstance(later, Sent) and later.message.seq == 3
    seqs = Message.objects.filter(conversation_id=mine).order_by("seq")
    assert [m.seq for m in seqs] == [1, 2, 3]
    # The conversation that stores the key has no other send in the batch.
    refused, alone = store_sends([SendRequest(c, mine, "m", "x"), SendRequest(c, other, "m", "y")])
    assert isinstance(refused, TetherError) and refused.code == Code.FORBIDDEN
    assert isinstance(alone, Sent) and not alone.duplicate and alone.message.seq == 1


def _outcomes(results: list[sends.Result], requests: list[SendRequest]) -> list[Any]:
    """What a sender can tell from its answers: forbidden, or which send's message
    (by index), in which conversation (by position), at which seq, duplicate or not."""
    origin: dict[str, int] = {}
    out: list[Any] = []
    for i, result in enumerate(results):
        if isinstance(result, TetherError):
            out.append(result.code)
            continue
        m = result.message
        origin.setdefault(m.id, i)
        out.append((origin[m.id], m.conversation_id[-1], m.seq, result.duplicate))
    return out


def test_a_batch_answers_as_its_sends_would_one_at_a_time() -> None:
    """Random batches over few keys and conversations (some forbidden, some gone),
    in two identical worlds: one stores each batch together, the other send by
    send. Every answer, every seq and every conversation's head must agree."""
    rng = random.Random(20261202)
    worlds = []
    for world in "xy":
        a, b = (User.objects.create(username=f"{world}{n}") for n in "ab")
        convs = {}
        for name, members in (("1", (a, b)), ("2", (a,)), ("3", (b,))):
            convs[name] = Conversation.objects.create(
                id=f"{world}{name}", kind="group", title="t", created_by=a
            ).id
            Membership.objects.bulk_create(
                [Membership(conversation_id=convs[name], user=u) for u in members]
            )
        convs["gone"] = f"{world}9"  # never created
        worlds.append(((a, b), convs))
    for round_ in range(60):
        # Few fresh keys per batch (so keys repeat within it), some from the last one.
        plan = [
            (
                rng.randrange(2),
                rng.choice(["1", "1", "2", "3", "gone"]),
                f"{round_ - (rng.random() < 0.2)}.{rng.randrange(3)}",
            )
            for _ in range(rng.randrange(1, 10))
        ]
        (users, convs), (users_y, convs_y) = worlds
        together = [SendRequest(users[u], convs[c], key, "b") for u, c, key in plan]
        alone = [SendRequest(users_y[u], convs_y[c], key, "b") for u, c, key in plan]
        batched = store_sends(together)
        one_by_one = [sends._one(r) for r in alone]
        assert _outcomes(batched, together) == _outcomes(one_by_one, alone), plan
    heads = {
        cid[-1] + cid[0]: seq for cid, seq in Conversation.objects.values_list("id", "last_seq")
    }
    assert [heads[f"{n}x"] for n in "123"] == [heads[f"{n}y"] for n in "123"]
    for cid, head in Conversation.objects.values_list("id", "last_seq"):
        seqs = Message.objects.filter(conversation_id=cid).order_by("seq")
        assert [m.seq for m in seqs] == list(range(1, head + 1))


def test_a_key_stored_elsewhere_meanwhile_falls_back_to_one_by_one(
    people: list[User], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, _ = people
    cid = conversation(a, b)
    (raced,) = store_sends([SendRequest(b, cid, "raced", "stored by another node")])
    # As if the other node committed between this batch's look-up and its insert.
    monkeypatch.setattr(sends, "_existing", lambda cursor, keys: lambda: {})
    results = store_sends([SendRequest(a, cid, "mine", "m"), SendRequest(b, cid, "raced", "r")])
    mine, again = results
    assert isinstance(again, Sent) and again.duplicate and again.message.id == raced.message.id
    assert isinstance(mine, Sent) and not mine.duplicate and mine.message.seq == 2
    assert [m.seq for m in Message.objects.filter(conversation_id=cid).order_by("seq")] == [1, 2]
    # An expected race: no warning from psycopg's pipeline clean-up for operators.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_request_validates_before_any_database_work(people: list[User]) -> None:
    with pytest.raises(TetherError) as bad:
        sends.request(people[0], 42, "k", "body")
    assert bad.value.code == Code.BAD_REQUEST
    with pytest.raises(TetherError) as empty:
        sends.request(people[0], "c", "k", "   ")
    assert empty.value.code == Code.BAD_REQUEST


async def test_sends_arriving_during_a_batch_go_together_in_the_next() -> None:
    sizes: list[int] = []
    release = asyncio.Event()

    async def store(requests: list[SendRequest]) -> list[TetherError]:
        sizes.append(len(requests))
        await release.wait()
        return [TetherError(Code.FORBIDDEN, r.client_id) for r in requests]

    queue = SendQueue(store=store, max_batch=4)
    sends = [
        asyncio.ensure_future(queue.send(SendRequest(None, "c", f"k{i}", "b"))) for i in range(7)
    ]
    await asyncio.sleep(0)  # let them all queue behind the first batch
    release.set()
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert sizes == [4, 3]
    assert [str(r.message) for r in results] == [f"k{i}" for i in range(7)]


async def test_a_failed_batch_fails_each_of_its_sends_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def store(requests: list[SendRequest]) -> list[TetherError]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database went away")
        return [TetherError(Code.FORBIDDEN, "ok") for _ in requests]

    queue = SendQueue(store=store)
    first = await asyncio.gather(
        queue.send(SendRequest(None, "c", "k", "b")), return_exceptions=True
    )
    assert isinstance(first[0], RuntimeError)
    with pytest.raises(TetherError):
        await queue.send(SendRequest(None, "c", "k", "b"))


@pytest.mark.django_db(transaction=False)
def test_the_same_rules_hold_on_postgresql(postgres_service) -> None:  # noqa: F811
    """PostgreSQL takes another path (arrays, row locks in id order): run this file there."""
    rerun_on_postgresql(__file__, postgres_service, "not on_postgresql")


async def test_a_send_is_answered_only_after_its_batch_is_published() -> None:
    published = asyncio.Event()
    release = asyncio.Event()

    async def store(requests: list[SendRequest]) -> list[TetherError]:
        return [TetherError(Code.FORBIDDEN, r.client_id) for r in requests]

    async def publish(results: list[TetherError]) -> None:
        published.set()
        await release.wait()

    queue = SendQueue(store=store, publish=publish)
    sending = asyncio.ensure_future(queue.send(SendRequest(None, "c", "a", "b")))
    await asyncio.wait_for(published.wait(), 5)
    await asyncio.sleep(0.05)
    assert not sending.done()
    release.set()
    with pytest.raises(TetherError):
        await asyncio.wait_for(sending, 5)


def test_a_send_alone_is_stored_checked_and_published_once(
    people: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = people
    cid = conversation(a, b)
    published: list[dict[str, Any]] = []

    async def record(runs: dict[str, Any]) -> None:
        published.append(runs)

    monkeypatch.setattr("realtime.chat.events.messages_stored", record)
    first = sends.send(a, cid, "k1", "hello")
    assert not first.duplicate and first.message.seq == 1
    again = sends.send(a, cid, "k1", "other body")
    assert again.duplicate and again.message.id == first.message.id
    assert [list(run) for run in published] == [[cid]]  # the duplicate is not news
    assert published[0][cid][0][0] == 1
    with pytest.raises(TetherError) as refused:
        sends.send(c, cid, "k2", "not a member")
    assert refused.value.code == Code.FORBIDDEN
    with pytest.raises(TetherError) as bad:
        sends.send(a, cid, "", "no key")
    assert bad.value.code == Code.BAD_REQUEST


def test_a_send_is_answered_even_when_its_news_cannot_leave(
    people: list[User], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, _ = people
    cid = conversation(a, b)

    async def layer_down(runs: dict[str, Any]) -> None:
        raise ConnectionError("Redis is away")

    monkeypatch.setattr("realtime.chat.events.messages_stored", layer_down)
    sent = sends.send(a, cid, "k1", "stored all the same")
    assert not sent.duplicate and sent.message.seq == 1
    assert Message.objects.filter(conversation_id=cid).count() == 1
    assert any("Redis is away" in str(r.exc_info) for r in caplog.records if r.exc_info)

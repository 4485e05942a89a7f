//! The replay body on its own: what a copy sends, and when a copy can be made.

use http_body_util::{BodyExt as _, StreamBody};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::*;

const BOUND: usize = 64 * 1024;

type Sender = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

/// A streamed body whose frames the test sends one at a time; dropping the sender ends
/// it.
fn streamed() -> (Sender, ProxyBody) {
    let (tx, rx) = mpsc::channel(8);
    (
        tx,
        ProxyBody::boxed(StreamBody::new(ReceiverStream::new(rx))),
    )
}

async fn send(tx: &Sender, data: &'static str) {
    tx.send(Ok(Frame::data(Bytes::from_static(data.as_bytes()))))
        .await
        .unwrap();
}

async fn next_data(body: &mut ProxyBody) -> Bytes {
    let frame = body.frame().await.expect("a frame").expect("no error");
    frame.into_data().expect("a data frame")
}

async fn collect(body: ProxyBody) -> Bytes {
    body.collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn a_body_read_to_its_end_replays_whole() {
    let (tx, body) = streamed();
    let (first, replay) = Replay::wrap(body, BOUND);
    for part in ["he", "ll", "o"] {
        send(&tx, part).await;
    }
    drop(tx);
    assert_eq!(collect(first).await, "hello");
    for _ in 0..2 {
        let again = replay.try_body().expect("replayable");
        assert_eq!(again.size_hint().exact(), Some(5));
        assert_eq!(collect(again).await, "hello");
    }
}

#[tokio::test]
async fn a_body_still_held_unread_is_not_replayable() {
    let (first, replay) = Replay::wrap(ProxyBody::full("x"), BOUND);
    assert!(replay.try_body().is_none(), "the first copy still holds it");
    drop(first);
    assert_eq!(collect(replay.try_body().unwrap()).await, "x");
}

#[tokio::test]
async fn copies_of_an_ended_body_are_read_together_while_the_first_is_still_held() {
    let (mut first, replay) = Replay::wrap(ProxyBody::full("whole"), BOUND);
    assert_eq!(next_data(&mut first).await, "whole");
    assert!(first.is_end_stream());
    // The first copy is still held (a connection has not dropped it yet).
    let (a, b) = (replay.try_body().unwrap(), replay.try_body().unwrap());
    let (a, b) = futures_util::join!(collect(a), collect(b));
    assert_eq!((a.as_ref(), b.as_ref()), (&b"whole"[..], &b"whole"[..]));
    drop(first);
}

#[tokio::test]
async fn an_unread_body_is_handed_back_whole_even_past_the_bound() {
    let (first, replay) = Replay::wrap(ProxyBody::full(vec![7u8; 100 * 1024]), BOUND);
    drop(first);
    let again = replay.try_body().expect("replayable");
    assert_eq!(collect(again).await.len(), 100 * 1024);
    assert!(replay.try_body().is_none(), "read past the bound this time");
}

#[tokio::test]
async fn a_part_read_body_replays_its_prefix_then_reads_on() {
    let (tx, body) = streamed();
    let (mut first, replay) = Replay::wrap(body, BOUND);
    send(&tx, "ab").await;
    assert_eq!(next_data(&mut first).await, "ab");
    drop(first);
    let mut again = replay.try_body().expect("the original was let go");
    assert_eq!(next_data(&mut again).await, "ab", "the recording first");
    send(&tx, "cd").await;
    drop(tx);
    assert_eq!(collect(again).await, "cd", "then the rest of the original");
    assert_eq!(collect(replay.try_body().unwrap()).await, "abcd");
}

#[tokio::test]
async fn trailers_are_replayed() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-t", "1".parse().unwrap());
    let (first, replay) = Replay::wrap(ProxyBody::with_trailers("ab", trailers), BOUND);
    let sent = first.collect().await.unwrap();
    assert_eq!(sent.trailers().unwrap()["x-t"], "1");
    let again = replay.try_body().unwrap().collect().await.unwrap();
    assert_eq!(again.trailers().unwrap()["x-t"], "1");
    assert_eq!(again.to_bytes(), "ab");
}

#[tokio::test]
async fn a_body_past_the_bound_is_not_replayable_but_is_sent_whole() {
    let (tx, body) = streamed();
    let (first, replay) = Replay::wrap(body, 4);
    send(&tx, "abc").await;
    send(&tx, "de").await;
    drop(tx);
    assert_eq!(
        collect(first).await,
        "abcde",
        "the reading copy is never cut short"
    );
    assert!(replay.is_lost());
    assert!(replay.try_body().is_none());
}

#[tokio::test]
async fn a_body_that_failed_is_not_replayable() {
    let (tx, body) = streamed();
    let (first, replay) = Replay::wrap(body, BOUND);
    send(&tx, "ab").await;
    tx.send(Err("client went away".into())).await.unwrap();
    assert!(first.collect().await.is_err());
    assert!(replay.is_lost());
    assert!(replay.try_body().is_none());
}

#[tokio::test]
async fn a_second_replay_while_the_first_copy_is_still_being_read() {
    let (tx, body) = streamed();
    let (mut first, replay) = Replay::wrap(body, BOUND);
    send(&tx, "ab").await;
    assert_eq!(next_data(&mut first).await, "ab");
    // The first copy holds the unfinished original (its connection is still sending
    // it): no copy now, though the body is not lost.
    assert!(replay.try_body().is_none());
    assert!(!replay.is_lost());

    // Once it reached the end, copies need only the recording, though it is held still.
    drop(tx);
    assert!(first.frame().await.is_none());
    assert_eq!(collect(replay.try_body().unwrap()).await, "ab");
    assert_eq!(collect(replay.try_body().unwrap()).await, "ab");
    drop(first);
}

#[tokio::test]
async fn a_copy_let_go_unfinished_hands_the_original_to_the_next() {
    let (tx, body) = streamed();
    let (mut first, replay) = Replay::wrap(body, BOUND);
    send(&tx, "ab").await;
    assert_eq!(next_data(&mut first).await, "ab");
    drop(first);
    let mut second = replay.try_body().expect("the original was let go");
    assert_eq!(next_data(&mut second).await, "ab");
    assert!(replay.try_body().is_none(), "the second copy holds it now");
    drop(second);
    let third = replay.try_body().expect("let go again");
    send(&tx, "cd").await;
    drop(tx);
    assert_eq!(collect(third).await, "abcd");
}

#[tokio::test]
async fn the_first_copy_passes_the_original_size_hint_on() {
    let (first, _replay) = Replay::wrap(ProxyBody::full("12345"), BOUND);
    assert_eq!(first.size_hint().exact(), Some(5));
    assert!(!first.is_end_stream());
}

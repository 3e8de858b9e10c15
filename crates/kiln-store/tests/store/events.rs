use kiln_protocol::{Event, EventKind, ExecStream};
use kiln_store::{AttemptRef, StoreError};

fn output(seq: u64, text: &str) -> Event {
    Event::new(
        seq,
        EventKind::ExecOutput {
            chunk_id: "t1".into(),
            stream: ExecStream::Stdout,
            text: text.into(),
        },
    )
}

on_both_backends! {
    async fn a_follow_up_reads_the_whole_conversation_past_one_page_of_events(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let attempt = AttemptRef::new(task.task.id.clone(), 1);
        // More than one page (10,000) of what a follow-up needs (command
        // output), with streamed deltas between that it does not need.
        let page = kiln_store::MAX_EVENTS_PER_READ as u64;
        let total = page + page / 2;
        let events: Vec<Event> = (1..=total)
            .map(|seq| match seq % 10 {
                0 => Event::new(seq, EventKind::ModelDelta { text: "x".into() }),
                _ if seq == total - 1 => Event::new(
                    seq,
                    EventKind::Message {
                        role: kiln_protocol::Role::User,
                        text: "the last message".into(),
                    },
                ),
                _ => output(seq, "line\n"),
            })
            .collect();
        for batch in events.chunks(2_000) {
            t.store.append_events(&attempt, batch).await.unwrap();
        }

        let conversation = t.store.conversation_events(&task.task.id, 1).await.unwrap();
        let wanted: Vec<u64> = (1..=total).filter(|seq| seq % 10 != 0).collect();
        let seqs: Vec<u64> = conversation.iter().map(|e| e.seq).collect();
        assert!(wanted.len() as u64 > page);
        assert_eq!(seqs, wanted, "deltas left out, nothing past the first page lost");
        assert!(matches!(
            &conversation.last().unwrap().kind,
            EventKind::Message { text, .. } if text == "the last message"
        ));
    }

    async fn appended_events_read_back_in_order(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let attempt = AttemptRef::new(task.task.id.clone(), 1);
        let events: Vec<Event> = (1..=5).map(|i| output(i, &format!("line {i}\n"))).collect();
        let appended = t.store.append_events(&attempt, &events).await.unwrap();
        assert_eq!(appended.inserted, 5);

        let stored = t.store.events(&task.task.id, None, 0, 100).await.unwrap();
        let back: Vec<Event> = stored.iter().map(|s| s.event().unwrap()).collect();
        assert_eq!(back, events);
        assert!(stored.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(stored.last().unwrap().id, appended.last_id.unwrap());
        assert!(stored.iter().all(|s| s.kind == "exec.output" && s.attempt == 1));
    }

    async fn appending_the_same_seq_again_is_a_no_op(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let attempt = AttemptRef::new(task.task.id.clone(), 1);
        let first: Vec<Event> = (1..=3).map(|i| output(i, "a")).collect();
        t.store.append_events(&attempt, &first).await.unwrap();
        // A retried batch overlapping the stored one: only 4 and 5 are new.
        let retry: Vec<Event> = (2..=5).map(|i| output(i, "b")).collect();
        let appended = t.store.append_events(&attempt, &retry).await.unwrap();
        assert_eq!(appended.inserted, 2);
        let again = t.store.append_events(&attempt, &retry).await.unwrap();
        assert_eq!((again.inserted, again.last_id), (0, None));

        let stored = t.store.events(&task.task.id, None, 0, 100).await.unwrap();
        let texts: Vec<(u64, String)> = stored
            .iter()
            .map(|s| match s.event().unwrap().kind {
                EventKind::ExecOutput { text, .. } => (s.seq, text),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            texts,
            vec![(1, "a".into()), (2, "a".into()), (3, "a".into()), (4, "b".into()), (5, "b".into())]
        );
    }

    async fn reading_after_a_cursor_returns_exactly_what_was_missed(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 2).await;
        let id = task.task.id.clone();
        let one = AttemptRef::new(id.clone(), 1);
        let two = AttemptRef::new(id.clone(), 2);
        t.store.append_events(&one, &[output(1, "1a"), output(2, "1b")]).await.unwrap();
        t.store.append_events(&two, &[output(1, "2a")]).await.unwrap();
        let seen = t.store.events(&id, None, 0, 2).await.unwrap();
        assert_eq!(seen.len(), 2, "the limit holds");
        let last_event_id = seen[1].id;
        t.store.append_events(&one, &[output(3, "1c")]).await.unwrap();

        let missed = t.store.events(&id, None, last_event_id, 100).await.unwrap();
        let missed: Vec<(u32, u64)> = missed.iter().map(|e| (e.attempt, e.seq)).collect();
        assert_eq!(missed, vec![(2, 1), (1, 3)]);
        let only_two = t.store.events(&id, Some(2), 0, 100).await.unwrap();
        assert_eq!(only_two.len(), 1);
        assert_eq!(only_two[0].attempt, 2);
    }

    async fn concurrent_appenders_get_distinct_increasing_ids(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 4).await;
        let id = task.task.id.clone();
        let mut writers = Vec::new();
        for n in 1..=4u32 {
            let store = t.store.clone();
            let attempt = AttemptRef::new(id.clone(), n);
            writers.push(tokio::spawn(async move {
                for seq in 1..=25 {
                    store.append_event(&attempt, &output(seq, "x")).await.unwrap();
                }
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
        let all = t.store.events(&id, None, 0, 1000).await.unwrap();
        assert_eq!(all.len(), 100);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        for n in 1..=4 {
            let seqs: Vec<u64> = all.iter().filter(|e| e.attempt == n).map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=25).collect::<Vec<_>>(), "attempt {n} in order");
        }
    }

    async fn events_for_a_missing_attempt_are_refused(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let err = t
            .store
            .append_event(&AttemptRef::new(task.task.id.clone(), 2), &output(1, "x"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        let err = t.store.events(&task.task.id, None, 0, 0).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput { field: "limit", .. }), "{err}");
    }
}
